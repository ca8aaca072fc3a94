"""speech-bench without a model: manifests with speech spans, the stream plan, and the per-pattern report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speech_bench import console, markdown
from speech_bench.cli import _parser, patterns_of
from speech_bench.figures import mode_figures, wer_records
from speech_bench.manifest import Segment, Utterance, load_manifests, parse_row
from speech_bench.segments import SegmentationCounts
from speech_bench.streaming import (
    LEAD_S,
    OPEN_MIC,
    PATTERNS,
    PUSH_TO_TALK,
    TIMEOUT,
    Record,
    plan_stream,
)

RATE = 16000


def _wav(path: Path, lead: float, speech: float, tail: float, noise: float = 0.0) -> np.ndarray:
    t = np.arange(round(speech * RATE)) / RATE
    audio = np.concatenate(
        [np.zeros(round(lead * RATE)), 0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(round(tail * RATE))]
    ).astype(np.float32)
    if noise:
        audio = audio + np.random.default_rng(1).normal(scale=noise, size=len(audio)).astype(np.float32)
    sf.write(path, audio, RATE, subtype="PCM_16")
    return audio


def test_manifest_round_trip_with_speech_spans_and_segments(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 0.3, 1.0, 0.5)
    _wav(tmp_path / "b.wav", 0.2, 3.0, 0.4)
    rows = [
        {"audio_filepath": "a.wav", "text": "one", "duration": 1.8, "kind": "tts-x", "speech_start": 0.31,
         "speech_end": 1.29},
        {"audio_filepath": "b.wav", "text": "two. three.", "duration": 3.6, "kind": "pauses",
         "speech_start": 0.2, "speech_end": 3.2,
         "segments": [{"text": "two.", "speech_start": 0.2, "speech_end": 1.1, "pauses": []},
                      {"text": "three.", "speech_start": 2.4, "speech_end": 3.2, "pauses": [[2.6, 2.9]]}]},
    ]  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_manifests([manifest])
    assert a == Utterance(tmp_path / "a.wav", "one", 1.8, "tts-x", tmp_path.name, 0.31, 1.29)
    assert not a.speech_estimated and not a.segments
    assert b.segments == (Segment("two.", 0.2, 1.1), Segment("three.", 2.4, 3.2))
    assert (b.speech_start, b.speech_end) == (0.2, 3.2)
    for utterance in (a, b):  # what a report stores reads back the same
        row = json.loads(json.dumps(utterance.to_row()))
        assert parse_row(row, Path(), utterance.set) == utterance


def test_old_manifests_get_estimated_spans(tmp_path: Path) -> None:
    _wav(tmp_path / "clean.wav", 0.4, 1.2, 0.8)
    noisy = _wav(tmp_path / "noisy.wav", 0.4, 1.2, 0.8, noise=0.05)  # noise all along: no silence left
    (tmp_path / "long.wav").write_bytes((tmp_path / "clean.wav").read_bytes())
    rows = [
        {"audio_filepath": "clean.wav", "text": "x", "duration": 2.4},
        {"audio_filepath": "noisy.wav", "text": "x", "duration": 2.4, "source": "clean.wav"},
        {"audio_filepath": "noisy.wav", "text": "x", "duration": 2.4},
        {"audio_filepath": "long.wav", "text": "a b", "duration": 2.4,
         "segments": [{"text": "a", "start": 0.35, "end": 0.9}, {"text": "b", "start": 1.1, "end": 1.65}]},
    ]  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clean, from_source, from_noise, long = load_manifests([manifest])
    assert clean.speech_estimated and (clean.speech_start, clean.speech_end) == (0.4, 1.6)
    # The noisy clip is estimated on its clean source; on its own, the noise runs to the clip's edges.
    assert from_source.speech_estimated and (from_source.speech_start, from_source.speech_end) == (0.4, 1.6)
    assert (from_noise.speech_start, from_noise.speech_end) == (0.0, pytest.approx(len(noisy) / RATE))
    # Segments written as start/end (the long set's) give the item's span; nothing is estimated.
    assert not long.speech_estimated and (long.speech_start, long.speech_end) == (0.35, 1.65)
    assert load_manifests([manifest], estimate=False)[0].speech_end is None


def test_a_subset_manifest_finds_the_clean_source_next_to_the_clip(tmp_path: Path) -> None:
    (tmp_path / "tts").mkdir()
    (tmp_path / "noisy").mkdir()
    _wav(tmp_path / "tts" / "clean.wav", 0.4, 1.2, 0.8)
    _wav(tmp_path / "noisy" / "clean_white.wav", 0.4, 1.2, 0.8, noise=0.05)
    # As in the bench sets' eval-subset.jsonl: the clip's path is rewritten, its source is not.
    row = {
        "audio_filepath": "noisy/clean_white.wav",
        "text": "x",
        "duration": 2.4,
        "source": "../tts/clean.wav",
    }
    manifest = tmp_path / "subset.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    (utterance,) = load_manifests([manifest])
    assert (utterance.speech_start, utterance.speech_end) == (0.4, 1.6)


@pytest.mark.parametrize("speech_end", [1.0, 1.234, 1.29])
def test_stream_plan_ends_the_speech_on_a_frame_boundary(speech_end: float) -> None:
    audio = np.ones(round(1.8 * RATE), np.float32) * 0.5
    utterance = Utterance(Path("x.wav"), "x", 1.8, "", "s", 0.2, speech_end)
    plan = plan_stream(audio, RATE, utterance)
    assert plan.speech_end % plan.frame == 0 and plan.frames * plan.frame == plan.speech_end
    assert plan.speech_end - plan.lead == round(speech_end * RATE)  # the clip is cut at its speech end
    assert round(LEAD_S * RATE) <= plan.lead < round(LEAD_S * RATE) + plan.frame
    assert plan.speech_start == plan.lead + round(0.2 * RATE)
    assert len(plan.pcm) == 2 * plan.speech_end
    assert plan.pcm[: 2 * plan.lead] == bytes(2 * plan.lead)  # leading silence, then the clip
    no_span = plan_stream(audio, RATE, Utterance(Path("x.wav"), "x", 1.8, "", "s"))
    assert no_span.speech_end - no_span.lead == len(audio)


def _record(
    name: str,
    pattern: str,
    latency: float | None,
    finals: int = 1,
    text: str = "a b c d",
    timeout: bool = False,
) -> Record:
    utterance = Utterance(Path(f"{name}.wav"), "a b c d", 2.0, "tts-x", "s", 0.2, 1.8)
    errors = [TIMEOUT] if timeout else []
    return Record(utterance, "edge", text, text, "", False, latency_ms=latency, finals=finals,
                  finalize_ms=[100.0] * finals, pattern=pattern, errors=errors)  # fmt: skip


def _pause_record(counts: SegmentationCounts, latencies: list[float]) -> Record:
    segments = (Segment("a b", 0.2, 1.0), Segment("c d", 2.5, 3.3))
    utterance = Utterance(Path("p.wav"), "a b c d", 3.6, "pauses", "s", 0.2, 3.3, segments)
    return Record(utterance, "edge", "a b c x", finals=counts.finals, pattern=OPEN_MIC, segmentation=counts,
                  sentence_latency_ms=latencies)  # fmt: skip


def _records() -> list[Record]:
    return [
        _record("u1", OPEN_MIC, 600.0),
        _record("u1", PUSH_TO_TALK, 250.0, text="a b c"),
        _record("u2", OPEN_MIC, 800.0),
        _record("u2", PUSH_TO_TALK, 350.0),
        _record("u3", OPEN_MIC, None, finals=0, text="", timeout=True),
        _record("u3", PUSH_TO_TALK, None, finals=2),
        _pause_record(SegmentationCounts(2, 3, 1, 0, 0, 0), [700.0]),
        _pause_record(SegmentationCounts(2, 1, 0, 1, 0, 0), []),
    ]


def test_figures_per_pattern_with_open_mic_first_and_wer_from_open_mic() -> None:
    figures = mode_figures(_records())
    assert list(figures["patterns"]) == [OPEN_MIC, PUSH_TO_TALK]
    open_mic, push = figures["patterns"][OPEN_MIC], figures["patterns"][PUSH_TO_TALK]
    assert open_mic["utterances"] == 3 and open_mic["latency_measured"] == 2
    assert (open_mic["no_final"], open_mic["multi_final"], open_mic["timeouts"]) == (1, 0, 1)
    assert open_mic["latency_ms"]["p50"] == pytest.approx(700.0)
    assert (push["no_final"], push["multi_final"], push["timeouts"]) == (0, 1, 0)
    assert push["latency_ms"]["p50"] == pytest.approx(300.0)
    # The headline is open-mic's; WER is over each utterance once: open-mic records and the pause items.
    assert figures["latency_pattern"] == figures["wer_pattern"] == OPEN_MIC
    assert figures["latency_ms"] == open_mic["latency_ms"]
    assert figures["utterances"] == 5 == len(wer_records(_records()))
    # u3 gave nothing (4 deletions), each pause item one substitution; push-to-talk's u1 does not count.
    assert figures["wer"] == pytest.approx(6 / 20)
    segmentation = figures["segmentation"]
    assert (segmentation["items"], segmentation["sentences"], segmentation["finals"]) == (2, 4, 4)
    assert (segmentation["split"], segmentation["merged"], segmentation["items_with_errors"]) == (1, 1, 2)
    assert segmentation["sentence_latency_ms"]["p50"] == pytest.approx(700.0)


def test_push_to_talk_alone_is_the_headline() -> None:
    figures = mode_figures([r for r in _records() if r.pattern == PUSH_TO_TALK])
    assert figures["latency_pattern"] == figures["wer_pattern"] == PUSH_TO_TALK
    assert list(figures["patterns"]) == [PUSH_TO_TALK] and "segmentation" not in figures


def test_record_json_round_trip_and_reports_written_before_the_patterns() -> None:
    for record in _records():
        assert Record.from_json(json.loads(json.dumps(record.to_json()))) == record
    old = {"mode": "edge", "text": "a", "latency_ms": 300.0, "finals": 1, "audio_filepath": "x.wav",
           "reference": "a", "kind": "k", "duration": 1.0, "set": "s"}  # fmt: skip
    legacy = Record.from_json(old)
    assert legacy.pattern == "clip-end" and legacy.utterance.speech_end is None
    assert list(mode_figures([legacy])["patterns"]) == ["clip-end"]


def _report() -> dict[str, object]:
    data = mode_figures(_records())
    data["records"] = [r.to_json() for r in _records()]
    return {
        "created": "now", "machine": {"platform": "p", "cpus": 2, "python": "3"},
        "settings": {"speed": 1.0, "cloud_model": "base", "cloud_threads": 2, "patterns": list(PATTERNS),
                     "lead_s": LEAD_S},
        "modes": {"edge": data},
    }  # fmt: skip


def test_console_and_markdown_say_which_pattern_each_figure_is() -> None:
    report = _report()
    text = console.summary(report)
    header, row = text.splitlines()[:2]
    assert header.split() == ["mode", "WER", "offload", "om", "p50", "om", "p95", "om", "0/2+", "ptt", "p50",
                              "ptt", "p95", "ptt", "0/2+", "fin", "p50", "1st", "part", "cloud", "s", "edge",
                              "RTF"]  # fmt: skip
    assert row.split()[:9] == ["edge", "30.00%", "0.0%", "700", "790", "1/0", "300", "345", "0/1"]
    assert "om = open-mic" in text and "ptt = push-to-talk" in text and "over the open-mic records" in text
    assert "1 of 4 sentences split, 1 finals merging sentences" in text
    section = markdown.render(report, "speech-bench x", None)
    assert "| open-mic latency p50 / p95 / p99 ms | open-mic 0/2+ | push-to-talk latency" in section
    assert "| edge | 30.00% | 0.0% | 700 / 790 / 798 | 1/0 | 300 / 345 / 349 | 0/1 |" in section
    assert (
        "**open-mic**" in section and "**push-to-talk**" in section and "over the open-mic records" in section
    )
    assert "| edge | 2 | 4 | 1 | 1 | 0 | 0 | 700 / 700 |" in section


def test_pattern_flag() -> None:
    assert _parser().parse_args(["m.jsonl"]).pattern == "both"
    assert patterns_of("both") == (OPEN_MIC, PUSH_TO_TALK) and patterns_of(PUSH_TO_TALK) == (PUSH_TO_TALK,)
    with pytest.raises(SystemExit):
        _parser().parse_args(["m.jsonl", "--pattern", "walkie-talkie"])
