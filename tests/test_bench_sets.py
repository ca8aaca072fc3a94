"""scripts/build_bench_sets.py: the --small build is well formed, deterministic, and its sentences are new.

No model: this checks the data, not how well anything recognizes it (see the script's docstring for that).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.scripts import load_script

bench = load_script("build_bench_sets")
ENGINES = {"hibari", "piper", "flite", "espeak"}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The --small build, twice into separate directories (the pocketsphinx sdist download is shared)."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    bench.build(first, small=True)
    bench.build(second, small=True)
    return first, second


def _rows(directory: Path) -> list[dict[str, Any]]:
    lines = (directory / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("name", bench.SETS)
def test_manifests_are_well_formed(builds: tuple[Path, Path], name: str) -> None:
    target = builds[0] / name
    rows = _rows(target)
    assert rows
    for row in rows:
        assert {"audio_filepath", "text", "duration", "kind", "voice"} <= row.keys()
        assert isinstance(row["text"], str) and row["text"].strip()
        assert isinstance(row["voice"], str) and row["voice"]
        path = target / str(row["audio_filepath"])
        assert not Path(str(row["audio_filepath"])).is_absolute() and path.is_file()
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - float(row["duration"])) <= 0.010


def test_kinds_are_as_documented(builds: tuple[Path, Path]) -> None:
    out = builds[0]
    assert {r["kind"] for r in _rows(out / "real")} == {"real"}
    tts = _rows(out / "tts")
    assert len(tts) == 8
    assert {str(r["kind"]).removeprefix("tts-") for r in tts} <= ENGINES
    assert all(str(r["kind"]).startswith("tts-") for r in tts)
    # Stride 8 over the sentences with 7 voices: the small set still hears every voice that works here.
    built_with = json.loads((out / "tts" / "build.json").read_text())["voices"]
    assert {r["voice"] for r in tts} == {v.split("/", 1)[1] for v in built_with}
    noisy = _rows(out / "noisy")
    assert {r["kind"] for r in noisy} == set(bench.SMALL.noisy_conditions) <= set(bench.NOISY_CONDITIONS)
    tts_texts = {r["text"] for r in tts}
    assert all(r["text"] in tts_texts and (out / "noisy" / str(r["source"])).is_file() for r in noisy)
    (long,) = _rows(out / "long")
    assert long["kind"] == "long"


def test_clean_tts_clips_pass_the_sanity_checks(builds: tuple[Path, Path]) -> None:
    target = builds[0] / "tts"
    for row in _rows(target):
        audio, _ = sf.read(target / str(row["audio_filepath"]), dtype="float32")
        assert bench.clip_problems(audio) == [], row


def test_long_file_is_about_forty_seconds_with_a_joined_transcript(builds: tuple[Path, Path]) -> None:
    (long,) = _rows(builds[0] / "long")
    low, high = bench.SMALL.long_seconds
    assert low <= float(long["duration"]) <= high + 1.0
    segments = long["segments"]
    assert isinstance(segments, list)
    assert long["text"] == " ".join(s["text"] for s in segments)
    sources = {r["text"] for name in ("real", "tts") for r in _rows(builds[0] / name)}
    assert {s["text"] for s in segments} <= sources
    assert {s["text"] for s in segments} & {r["text"] for r in _rows(builds[0] / "real")}, "no real speech"
    assert {s["text"] for s in segments} & {r["text"] for r in _rows(builds[0] / "tts")}, (
        "no synthetic speech"
    )
    ends = [0.0] + [x for s in segments for x in (s["start"], s["end"])]
    assert ends == sorted(ends) and ends[-1] <= float(long["duration"])
    gaps = np.diff(ends)[0::2]  # the pause before each segment
    assert all(0.4 - 0.01 <= g <= 1.5 + 0.01 for g in gaps)


@pytest.mark.parametrize("name", bench.SETS)
def test_build_is_deterministic(builds: tuple[Path, Path], name: str) -> None:
    first, second = (b / name for b in builds)
    assert (first / "manifest.jsonl").read_bytes() == (second / "manifest.jsonl").read_bytes()
    for row in _rows(first):
        wav = str(row["audio_filepath"])
        assert (first / wav).read_bytes() == (second / wav).read_bytes(), wav


def test_cached_sets_are_left_alone_and_a_different_recipe_is_refused(builds: tuple[Path, Path]) -> None:
    manifest = builds[0] / "tts" / "manifest.jsonl"
    before = manifest.stat().st_mtime_ns
    bench.build(builds[0], ["tts"], small=True)
    assert manifest.stat().st_mtime_ns == before
    # A full build over a small one would silently mix the two; it must say so instead.
    with pytest.raises(SystemExit, match="--force"):
        bench.build(builds[0], ["tts"], small=False)


def test_sentences_are_new() -> None:
    bench.check_sentences()  # raises on a repeat or a near repeat
    reserved = {bench._norm_sentence(s) for s in bench.reserved_sentences()}
    ours = [bench._norm_sentence(s) for s in bench.SENTENCES]
    assert len(reserved) > 50 and len(ours) >= 60
    assert not reserved & set(ours)
    assert len(set(ours)) == len(ours)
    with pytest.raises(SystemExit, match="repeats"):
        bench.check_sentences([*bench.SENTENCES, "Turn the kitchen lights down to 30 percent!"])


def _peak(audio: np.ndarray, start: float, end: float) -> float:
    """Largest magnitude between two times (seconds), a sample in from each side."""
    part = audio[round(start * 16000) + 1 : round(end * 16000) - 1]
    return float(np.abs(part).max()) if len(part) else 0.0


QUIET = 0.02  # speech is leveled to -24 dBFS RMS and peaks far above this; pauses hold -65 dB noise


def test_synthesized_rows_say_where_their_speech_is(builds: tuple[Path, Path]) -> None:
    out = builds[0]
    tts = {r["audio_filepath"]: r for r in _rows(out / "tts")}
    for row in tts.values():
        audio, _ = sf.read(out / "tts" / str(row["audio_filepath"]), dtype="float32")
        start, end, duration = row["speech_start"], row["speech_end"], float(row["duration"])
        # The builder added 0.15-0.5 s before and 0.2-0.5 s after the engine's output, which has some
        # silence of its own: the speech sits inside, and outside it there is silence.
        assert 0.15 <= start < end <= duration - 0.2
        assert _peak(audio, start, end) > 0.1
        assert _peak(audio, 0.0, start) < QUIET and _peak(audio, end, duration) < QUIET
    for row in _rows(out / "noisy"):
        source = tts[Path(str(row["source"])).name]
        assert (row["speech_start"], row["speech_end"]) == (source["speech_start"], source["speech_end"])


@pytest.mark.parametrize("name", ["pauses", "hesitations"])
def test_pause_items_record_their_sentences_and_pauses(builds: tuple[Path, Path], name: str) -> None:
    target = builds[0] / name
    rows = _rows(target)
    assert len(rows) == bench.SMALL.pause_items
    pool = set(bench.pause_pool())
    for row in rows:
        segments = row["segments"]
        assert row["kind"] == name and 2 <= len(segments) <= 3
        assert row["text"] == " ".join(s["text"] for s in segments) and {s["text"] for s in segments} <= pool
        assert row["speech_start"] == segments[0]["speech_start"]
        assert row["speech_end"] == segments[-1]["speech_end"]
        audio, _ = sf.read(target / str(row["audio_filepath"]), dtype="float32")
        for before, after in itertools.pairwise(segments):
            assert 1.2 - 0.001 <= after["speech_start"] - before["speech_end"] <= 2.0 + 0.001
            assert _peak(audio, before["speech_end"], after["speech_start"]) < QUIET
        for s in segments:
            assert _peak(audio, s["speech_start"], s["speech_end"]) > 0.1
            for a, b in s["pauses"]:  # inside the sentence, not a new segment
                assert s["speech_start"] < a < b < s["speech_end"] and 0.3 - 0.001 <= b - a <= 0.45 + 0.001
                assert _peak(audio, a, b) < QUIET
        if name == "pauses":
            assert any(s["pauses"] for s in segments), "every item pauses inside a sentence at least once"
        assert _peak(audio, 0.0, row["speech_start"]) < QUIET
        assert _peak(audio, row["speech_end"], float(row["duration"])) < QUIET
    # A hesitation is cut where Whisper heard the sentence's first part end; one it did not hear word
    # for word keeps no pause, which must stay the exception.
    inner = [s["pauses"] for row in rows for s in row["segments"]]
    assert sum(map(bool, inner)) >= len(rows) // 2


def test_hesitations_are_the_pause_items_spoken_in_one_breath(builds: tuple[Path, Path]) -> None:
    """Same sentences, voices and inner-pause lengths as the pause items, and each hesitation sits where
    the sentence's first part ends (about its share of the words into the speech)."""
    pauses, hesitations = (_rows(builds[0] / name) for name in ("pauses", "hesitations"))
    for a, b in zip(pauses, hesitations, strict=True):
        assert a["text"] == b["text"] and a["voice"] == b["voice"]
        for x, y in zip(a["segments"], b["segments"], strict=True):
            assert x["text"] == y["text"]
            for (p0, p1), (h0, h1) in zip(x["pauses"], y["pauses"], strict=False):
                assert abs((p1 - p0) - (h1 - h0)) < 0.002  # the same drawn pause length
            if y["pauses"]:
                # The pause sits where the first part ends: after its share of the sentence's words.
                (h0, h1), words = y["pauses"][0], bench.split_sentence(y["text"])
                assert words is not None
                share = len(words[0].split()) / len(y["text"].split())
                spoken = (h0 - y["speech_start"]) / (y["speech_end"] - y["speech_start"] - (h1 - h0))
                assert abs(spoken - share) < 0.3, (y["text"], spoken, share)


def test_sentences_split_at_a_comma_or_before_a_phrase() -> None:
    assert bench.split_sentence("Yes, go ahead.") == ("Yes,", "go ahead.")
    assert bench.split_sentence("Close all the windows before it starts raining.") == (
        "Close all the windows",
        "before it starts raining.",
    )
    assert bench.split_sentence("Open the back gate.") == ("Open the", "back gate.")
    assert bench.split_sentence("Cancel that.") is None
    # Every item of the full set is made of held-out sentences, and the small set is its beginning.
    full = bench.pause_items(bench.FULL.pause_items)
    assert bench.pause_items(bench.SMALL.pause_items) == full[: bench.SMALL.pause_items]
    assert all(2 <= len(item) <= 3 and len(set(item)) == len(item) for item in full)
    bench.check_sentences(bench.pause_pool())
