"""speech-load: its figures, refusal classification and RSS growth exactly; then one short real run of N
concurrent WebSocket clients against a real edge (real VAD, Moonshine) with a real cloud behind it, and N
concurrent gRPC and REST clients against that cloud."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from speech_bench.load import (
    CloudLoad,
    EdgeLoad,
    ProcessWatch,
    cloud_level,
    cpu_seconds,
    edge_level,
    edge_section,
    fixed_length,
    load_clips,
    rss_mb,
    wait_idle,
)
from speech_bench.load_report import (
    ADMITTED,
    BUSY,
    HANG,
    CloudCall,
    ProcessFigures,
    RssGrowth,
    SessionResult,
    UtteranceResult,
    attribute,
    classify_admission,
    classify_cloud,
    cloud_verdict,
    edge_verdict,
    parse_retry_after,
    percentile,
    process_figures,
    rss_bounded,
    rss_growth,
    summarize_cloud,
    summarize_edge,
)
from tests.servers import ThreadedCloud, ThreadedEdge, edge_settings


def _utt(first_ms: float | None, finals: int = 1, escalated: bool = False) -> UtteranceResult:
    return UtteranceResult(finals, first_ms, cap_ms=15000.0, escalated=escalated)


def test_percentiles_are_numpys_linear_ones() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 95) == 48.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_an_utterance_hangs_without_a_final_within_the_cap_and_has_latency_only_with_one_final() -> None:
    assert _utt(400.0).latency_ms == 400.0 and not _utt(400.0).hang
    assert _utt(None, finals=0).hang and _utt(None, finals=0).latency_ms is None
    late = _utt(16000.0)  # came, but after the client had given up on it
    assert late.hang and late.latency_ms is None
    split = _utt(300.0, finals=2)
    assert not split.hang and split.latency_ms is None


def test_edge_level_summary_per_level() -> None:
    sessions = [
        SessionResult(0, ADMITTED, [_utt(100.0), _utt(300.0, escalated=True), _utt(200.0)]),
        SessionResult(1, ADMITTED, [_utt(500.0, escalated=True), _utt(None, finals=0)], ["bad_audio"], 1),
        SessionResult(2, BUSY),
        SessionResult(3, HANG),
    ]
    edge_cpu = ProcessFigures(150.0, 400.0, 420.0, 430.0)
    level = summarize_edge(4, 61.04, sessions, {"edge": edge_cpu})
    assert level.streams == 4 and level.seconds == 61.0
    assert (level.sessions, level.admitted, level.busy, level.refusals_other) == (4, 2, 1, {"hang": 1})
    assert (level.utterances, level.finals, level.no_final, level.multi_final, level.hangs) == (5, 4, 1, 0, 1)
    assert level.spurious_finals == 1 and level.errors == {"bad_audio": 1}
    assert level.latency_ms == {"p50": 250.0, "p95": 470.0}  # of 100, 200, 300, 500
    assert level.escalated == 2 and level.escalated_latency_ms == {"p50": 400.0, "p95": 490.0}
    assert level.processes == {"edge": edge_cpu}
    assert edge_verdict(level, limit=8) == "1 busy (expected 0); 1 hang; 1 hung; 1 spurious; 1 bad_audio"


def test_edge_verdict_wants_exactly_the_refusals_past_the_limit() -> None:
    admitted = [SessionResult(i, ADMITTED, [_utt(200.0)]) for i in range(8)]
    busy = [SessionResult(8 + i, BUSY) for i in range(8)]
    assert edge_verdict(summarize_edge(8, 60.0, admitted), limit=8) == "ok"
    assert edge_verdict(summarize_edge(16, 60.0, admitted + busy), limit=8) == "ok"
    assert edge_verdict(summarize_edge(16, 60.0, admitted + busy[:7]), limit=8) == "7 busy (expected 8)"
    split = [SessionResult(0, ADMITTED, [_utt(200.0, finals=2)])]
    assert edge_verdict(summarize_edge(1, 60.0, split), limit=8) == "1 split"


def test_admission_classification() -> None:
    busy = {"type": "error", "code": "busy", "message": "too many sessions (limit 8)"}
    assert classify_admission({"type": "ready", "session_id": "s"}, None) == ADMITTED
    assert classify_admission(busy, 1013) == BUSY
    assert classify_admission(busy, 1000) == "busy_close_1000"
    assert classify_admission(busy, None) == "busy_close_None"
    assert classify_admission({"type": "error", "code": "unauthorized"}, 1008) == "refused_unauthorized"
    assert classify_admission({"type": "partial"}, None) == "unexpected_partial"
    assert classify_admission(None, None) == HANG
    assert classify_admission(None, 1013) == "busy_without_event"
    assert classify_admission(None, 1011) == "closed_1011"


def test_finals_go_to_the_utterance_they_overlap_most() -> None:
    utterances = [(0.5, 2.5), (3.4, 6.0), (7.0, 8.0)]
    assert attribute(utterances, (0.2, 2.7)) == 0  # the VAD's pre-roll and padding reach past the speech
    assert attribute(utterances, (2.3, 6.1)) == 1  # grazes the first, covers the second
    assert attribute(utterances, (6.2, 6.9)) is None  # in the silence between: spurious
    assert attribute([], (0.0, 1.0)) is None


def test_cloud_refusals_need_a_retry_after() -> None:
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None and parse_retry_after(None) is None
    assert parse_retry_after("-1") is None
    assert classify_cloud("rest", "200", None) == "ok"
    assert classify_cloud("rest", "503", "2") == "refused"
    assert classify_cloud("rest", "503", None) == "refused_without_retry_after"
    assert classify_cloud("rest", "timeout", None) == "timeout"
    assert classify_cloud("rest", "500", None) == "error_500"
    assert classify_cloud("grpc", "OK", None) == "ok"
    assert classify_cloud("grpc", "RESOURCE_EXHAUSTED", "2") == "refused"
    assert classify_cloud("grpc", "RESOURCE_EXHAUSTED", None) == "refused_without_retry_after"
    assert classify_cloud("grpc", "DEADLINE_EXCEEDED", None) == "timeout"
    assert classify_cloud("grpc", "UNAVAILABLE", None) == "error_UNAVAILABLE"


def test_cloud_level_summary_and_verdict() -> None:
    calls = [CloudCall("ok", ms) for ms in (1000.0, 2000.0, 3000.0, 4000.0)]
    calls += [CloudCall("refused", 5.0), CloudCall("refused", 6.0), CloudCall("timeout", 60000.0)]
    level = summarize_cloud("grpc", 16, 20.0, calls)
    assert (level.requests, level.ok, level.refused, level.errors) == (7, 4, 2, {"timeout": 1})
    assert level.latency_ms == {"p50": 2500.0, "p95": 3850.0}  # answered requests only
    assert level.ok_per_s == 0.2
    assert cloud_verdict(level, max_queue=8) == "1 timeout"
    clean = summarize_cloud("rest", 16, 20.0, calls[:6])
    assert cloud_verdict(clean, max_queue=8) == "ok"  # refusals past the queue bound are the contract
    assert cloud_verdict(summarize_cloud("rest", 4, 20.0, calls[:6]), 8) == "2 refused below the queue bound"
    assert cloud_verdict(summarize_cloud("rest", 16, 20.0, calls[4:6]), 8) == "nothing answered"


def test_rss_growth_over_a_soak() -> None:
    samples = [(0.0, 400.0), (60.0, 430.0), (120.0, 445.0), (180.0, 441.0), (240.0, 447.5)]
    growth = rss_growth(samples)
    # Half time is 120 s: the second half added 2.5 MB, the whole run 47.5 (mostly warm-up).
    assert growth == RssGrowth(400.0, 447.5, 447.5, 47.5, 2.5)
    assert rss_bounded(growth, 20.0) and not rss_bounded(growth, 2.0)
    assert rss_growth([(0.0, 300.0)]) == RssGrowth(300.0, 300.0, 300.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        rss_growth([])


def test_process_figures() -> None:
    assert process_figures(1.5, 3.0, [100.0, 130.0, 120.0]) == ProcessFigures(50.0, 100.0, 120.0, 130.0)
    assert process_figures(None, 3.0, []) == ProcessFigures(None, None, None, None)
    assert process_figures(2.0, 0.0, [1.0]) == ProcessFigures(None, 1.0, 1.0, 1.0)


def test_proc_readers_on_this_process() -> None:
    cpu, rss = cpu_seconds(os.getpid()), rss_mb(os.getpid())
    assert cpu is not None and cpu > 0 and rss is not None and rss > 10
    assert cpu_seconds(-1) is None and rss_mb(-1) is None


def test_process_watch_samples_and_times() -> None:
    async def watch() -> ProcessWatch:
        async with ProcessWatch({"me": os.getpid()}, interval_s=0.05) as w:
            sum(i * i for i in range(300_000))  # some CPU to measure
            await asyncio.sleep(0.2)
        return w

    w = asyncio.run(watch())
    assert len(w.rows) >= 3 and all("me" in values for _, values in w.rows)
    figures = w.figures()["me"]
    assert figures.cpu_pct is not None and figures.cpu_pct > 0
    assert figures.rss_peak_mb is not None and figures.rss_peak_mb >= (figures.rss_end_mb or 0) > 0


def test_fixed_length_utterances() -> None:
    a, b = np.ones(3, np.float32), np.full(5, 2.0, np.float32)
    out = fixed_length([a, b], seconds=1.0, rate=10, gap_s=0.2)
    assert [len(u) for u in out] == [10, 10]
    np.testing.assert_array_equal(out[0], [1, 1, 1, 0, 0, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(out[1], [2, 2, 2, 2, 2, 0, 0, 1, 1, 1])
    long = fixed_length([np.arange(20, dtype=np.float32)], seconds=1.0, rate=10)
    np.testing.assert_array_equal(long[0], np.arange(10))


def test_edge_section_renders_the_levels() -> None:
    level = summarize_edge(1, 20.0, [SessionResult(0, ADMITTED, [_utt(400.0), _utt(600.0)])])
    report: dict[str, Any] = {
        "created": "2025-01-01 00:00:00",
        "machine": {"platform": "Linux", "cpus": 2, "python": "3.11", "load_average_1min": 1.5},
        "command": "speech-load edge --streams 1 --seconds 20",
        "settings": {
            "manifests": ["m.jsonl"],
            "seconds": 20.0,
            "streams": [1],
            "cloud_model": "base",
            "cloud_threads": 2,
            "edge_config": "pasu",
            "edge_model": None,
            "max_sessions": 8,
            "clips": 3,
            "final_cap_s": 15.0,
            "session_utterances": 0,
            "stagger_s": 0.25,
            "cloud": True,
        },
        "levels": [level.to_json()],
    }
    lines = edge_section(report).splitlines()
    assert lines[0] == "<!-- load-edge:begin -->" and lines[-1] == "<!-- load-edge:end -->"
    assert "Reproduce: `speech-load edge --streams 1 --seconds 20`" in lines
    row = lines[-2].split(" | ")
    assert row[0] == "| 1" and row[1:5] == ["1 / 0", "2", "2", "0 / 0"]
    assert row[7] == "500 / 590" and row[-1] == "ok |"


@pytest.mark.model
def test_load_run_against_a_real_edge_and_cloud(
    edge_model: Any, cloud: ThreadedCloud, audio_dir: Path, tmp_path: Path
) -> None:
    clips = load_clips([audio_dir / "pocketsphinx" / "manifest.jsonl"], limit=4)
    # Every utterance escalates (always-cloud), so the cloud behind the edge is on the measured path; the
    # limit is 2 sessions so the third client must get a clean busy refusal.
    settings = edge_settings(tmp_path, cloud.grpc_target, always_cloud=True, max_sessions=2)
    edge = ThreadedEdge(settings, edge_model).start()
    try:
        load = EdgeLoad(edge.url, [c.plan for c in clips], final_cap_s=15.0, stagger_s=0.1)

        async def run() -> list[Any]:
            levels = []
            for streams in (1, 2, 3):
                assert await wait_idle(edge.http)
                levels.append((await edge_level(load, streams, 2.0, {}))[0])
            return levels

        levels = asyncio.run(run())
    finally:
        edge.stop()
    for level, admitted in zip(levels, (1, 2, 2), strict=True):
        assert level.admitted == admitted and level.refusals_other == {}
        assert level.busy == level.streams - admitted
        assert level.utterances >= admitted and level.finals == level.utterances
        assert level.no_final == level.multi_final == level.hangs == level.spurious_finals == 0
        assert level.errors == {}
        assert level.escalated == level.utterances
        for figures in (level.latency_ms, level.escalated_latency_ms):
            assert figures["p50"] is not None and figures["p50"] > 0
            assert figures["p95"] is not None and figures["p95"] >= figures["p50"]
        assert edge_verdict(level, limit=2) == "ok"

    utterances = fixed_length([c.speech for c in clips], seconds=2.0)
    cloud_load = CloudLoad(cloud.grpc_target, cloud.rest_url, utterances, request_timeout_s=120)

    async def cloud_run() -> list[Any]:
        # seconds=0: each of the 2 clients sends one request at the same moment.
        return [await cloud_level(cloud_load, interface, 2, 0.0, {}) for interface in ("grpc", "rest")]

    for level in asyncio.run(cloud_run()):
        assert (level.requests, level.ok, level.refused, level.errors) == (2, 2, 0, {})
        assert level.latency_ms["p50"] is not None and level.latency_ms["p50"] > 0
        assert cloud_verdict(level, max_queue=8) == "ok"
