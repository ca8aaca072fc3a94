"""speech-bench smoke run: a handful of utterances through the real system, every mode, report and plots."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from speech_bench.figures import SweepPoint, best_point, sweep_at
from speech_bench.manifest import Utterance
from speech_bench.scoring import corpus_wer, errors, normalize
from speech_bench.streaming import Record

pytestmark = pytest.mark.model


def test_scoring_normalizes_numbers_case_and_punctuation() -> None:
    assert normalize("Turn the lights down to 30%.") == normalize("turn the lights down to thirty percent")
    assert errors("ten of clubs", "10 of clubs.") == (0, 3)
    assert errors("ten of clubs", "ten of cloves") == (1, 3)
    assert errors("ten of clubs", "") == (3, 3)
    assert corpus_wer([("a b c d", "a b c d"), ("e f", "e x")]) == pytest.approx(1 / 6)


def _record(text: str, edge: str, cloud: str, p_edge: float, p_cloud: float) -> Record:
    utterance = Utterance(Path("x.wav"), text, 1.0, "k", "s")
    return Record(utterance, "cloud", cloud, edge, cloud, True, [], p_edge, p_cloud)


def test_sweep_replays_decisions_exactly() -> None:
    records = [
        _record("red green blue", "red green blue", "red green blue", 0.1, 0.2),  # both right
        _record("cats like milk", "cats like silk", "cats like milk", 0.8, 0.1),  # cloud right, edge unsure
        _record("open the door", "open the door", "open a door", 0.6, 0.9),  # edge right, cloud worse
    ]
    never, mid, always = sweep_at(records, [1.0, 0.5, 0.0])
    assert never == SweepPoint(1.0, 1 / 9, 0.0)
    assert mid == SweepPoint(0.5, 0.0, 2 / 3)  # escalates 2 and keeps the likelier each time
    assert always == SweepPoint(0.0, 0.0, 1.0)
    assert best_point([never, mid, always], max_offload=0.7) == mid
    assert best_point([never, mid, always], max_offload=0.1) == never


def test_speech_bench_smoke(tmp_path: Path, audio_dir: Path) -> None:
    manifest = audio_dir / "pocketsphinx" / "manifest.jsonl"
    out, plots = tmp_path / "report.json", tmp_path / "plots"
    script = Path(sys.executable).parent / "speech-bench"
    done = subprocess.run(
        [str(script), str(manifest), "--limit", "3", "--speed", "3", "--cloud-model", "tiny.en",
         "--out", str(out), "--plots", str(plots), "--sweep", "--benchmarks-md", str(tmp_path / "B.md")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"edge", "cloud", "naive", "pasu"}
    assert report["settings"]["patterns"] == ["open-mic", "push-to-talk"]
    for mode, data in report["modes"].items():
        # Each utterance streamed once per pattern; WER over the open-mic records, latency per pattern.
        assert data["utterances"] == 3 and len(data["records"]) == 6
        assert data["wer_pattern"] == data["latency_pattern"] == "open-mic"
        assert 0.0 <= data["wer"] < 0.5, mode
        assert data["latency_ms"]["p50"] is not None
        assert set(data["patterns"]) == {"open-mic", "push-to-talk"}
        assert all(p["latency_ms"]["p50"] is not None for p in data["patterns"].values())
        assert data["edge_peak_rss_mb"] > 100
        assert data["edge_rtf"] is not None and 0 < data["edge_rtf"] < 2
    assert report["modes"]["edge"]["offload"] == 0.0
    assert report["modes"]["cloud"]["offload"] == 1.0 and report["modes"]["cloud"]["cloud_seconds"] > 0
    assert report["modes"]["edge"]["cloud_seconds"] == 0.0
    assert report["oracle"]["wer"] <= min(report["oracle"]["edge_wer"], report["oracle"]["cloud_wer"])
    assert report["sweep"]["points"] and "operating_point" in report["sweep"]
    assert {p.name for p in plots.iterdir()} == {"latency_cdf.png", "wer_vs_offload.png", "wer_by_kind.png"}
    assert "oracle WER" in done.stdout and "om = open-mic" in done.stdout
    section = (tmp_path / "B.md").read_text()
    assert "| pasu |" in section and "| naive |" in section and "Oracle" in section and "Reproduce" in section
    assert "open-mic latency p50" in section and "push-to-talk latency p50" in section


def test_late_contextualization_modes_compare_the_same_model(tmp_path: Path, audio_dir: Path) -> None:
    """late-ctx (encoder during ingestion) and whole-enc (encoder after the endpoint) run the same
    conformer on the same clips: identical texts, and each mode reports its own finalization latency."""
    manifest = audio_dir / "tts" / "manifest.jsonl"
    out, logs = tmp_path / "report.json", tmp_path / "logs"
    script = Path(sys.executable).parent / "speech-bench"
    done = subprocess.run(
        [str(script), str(manifest), "--limit", "3", "--speed", "2", "--modes", "late-ctx", "whole-enc",
         "--edge-model", "conformer", "--pattern", "open-mic", "--out", str(out), "--keep-logs", str(logs)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "EDGE_LOG_LEVEL": "INFO"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    modes = json.loads(out.read_text())["modes"]
    assert set(modes) == {"late-ctx", "whole-enc"}
    late, whole = modes["late-ctx"], modes["whole-enc"]
    assert [r["text"] for r in late["records"]] == [r["text"] for r in whole["records"]]
    assert late["offload"] == whole["offload"] == 0.0 and late["cloud_seconds"] == 0.0
    for data in (late, whole):
        assert data["finalize_ms"]["p50"] is not None and data["finalize_ms"]["p50"] >= 0
        assert all(r["finalize_ms"] for r in data["records"])
    # --keep-logs keeps what the edges logged (the environment's EDGE_LOG_LEVEL wins): a line per final,
    # 3 utterances in each of the two modes.
    assert len(re.findall(r"final utterance=\S+ source=edge", (logs / "edge.log").read_text())) == 6
    # A used directory is refused (an earlier run's queue would replay into the next), before any stream.
    again = subprocess.run(
        [str(script), str(manifest), "--keep-logs", str(logs)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode != 0 and "give a new or empty directory" in again.stderr


def test_write_calibration_refuses_a_route_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped Moonshine calibration escalates by its route model: a threshold swept over the recorded
    # P(wrong) would land on the wrong scale, so nothing is written.
    from speech_bench.cli import write_calibration

    monkeypatch.delenv("EDGE_CALIBRATION_PATH", raising=False)
    with pytest.raises(SystemExit, match="route model"):
        write_calibration(tmp_path / "cal.json", 0.9, [])
    assert not (tmp_path / "cal.json").exists()
