"""Figures per mode and pattern, the oracle, and the threshold sweep from recorded confidences (no
re-decoding)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from speech_bench.scoring import errors
from speech_bench.segments import SegmentationCounts
from speech_bench.streaming import OPEN_MIC, PATTERNS, TIMEOUT, Record


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def wer_of(records: Sequence[Record], field: str = "text") -> float:
    e = w = 0
    for r in records:
        de, dw = errors(r.utterance.text, getattr(r, field))
        e += de
        w += dw
    return e / w if w else 0.0


def patterns_in(records: Sequence[Record]) -> list[str]:
    """The patterns of the single-utterance records, open-mic first (the headline), then push-to-talk."""
    seen = {r.pattern for r in records if not r.utterance.segments}
    return [p for p in PATTERNS if p in seen] + sorted(seen - set(PATTERNS))


def wer_records(records: Sequence[Record]) -> list[Record]:
    """Every utterance once: the headline pattern's records (open-mic when it ran), plus the items with
    segments (streamed once, open-mic). WER, offload, the oracle and the sweep are computed on these."""
    patterns = patterns_in(records)
    headline = patterns[0] if patterns else OPEN_MIC
    return [r for r in records if r.utterance.segments or r.pattern == headline]


def pattern_figures(records: Sequence[Record]) -> dict[str, Any]:
    """Latency figures of one pattern's single-utterance records.

    Latency is taken on the utterances that gave exactly one final; ``no_final`` and ``multi_final``
    count the others, ``timeouts`` the open-mic ones with no final within the silence cap."""
    latency = [r.latency_ms for r in records if r.latency_ms is not None]
    finalize = [x for r in records for x in r.finalize_ms]
    partial = [r.first_partial_ms for r in records if r.first_partial_ms is not None]
    short = [r.latency_ms for r in records if r.latency_ms is not None and r.utterance.duration <= 10]
    return {
        "utterances": len(records),
        "latency_measured": len(latency),
        "no_final": sum(r.finals == 0 for r in records),
        "multi_final": sum(r.finals >= 2 for r in records),
        "timeouts": sum(TIMEOUT in r.errors for r in records),
        "latency_ms": {"p50": _pct(latency, 50), "p95": _pct(latency, 95), "p99": _pct(latency, 99)},
        "latency_ms_up_to_10s": {"p50": _pct(short, 50), "p95": _pct(short, 95)},
        "finalize_ms": {"p50": _pct(finalize, 50), "p95": _pct(finalize, 95), "p99": _pct(finalize, 99)},
        "first_partial_ms": {"p50": _pct(partial, 50), "p95": _pct(partial, 95)},
    }


def segmentation_figures(records: Sequence[Record]) -> dict[str, Any] | None:
    """Split/merged counts over the items with segments (None when there were none)."""
    counted = [r.segmentation for r in records if r.segmentation is not None]
    if not counted:
        return None
    names = SegmentationCounts.__dataclass_fields__
    totals = {name: sum(getattr(c, name) for c in counted) for name in names}
    latency = [x for r in records for x in r.sentence_latency_ms]
    return {
        "pattern": OPEN_MIC,
        "items": len(counted),
        **totals,
        "items_with_errors": sum(c.split + c.merged + c.missed + c.spurious > 0 for c in counted),
        "sentence_latency_ms": {"p50": _pct(latency, 50), "p95": _pct(latency, 95)},
        "sentence_latency_measured": len(latency),
    }


def mode_figures(records: Sequence[Record]) -> dict[str, Any]:
    """A mode's figures: per pattern (``patterns``), the headline pattern's at the top level
    (``latency_pattern``), WER and offload over every utterance once (``wer_pattern``), and the
    segmentation of the items with segments."""
    singles = [r for r in records if not r.utterance.segments]
    patterns = {p: pattern_figures([r for r in singles if r.pattern == p]) for p in patterns_in(records)}
    headline = next(iter(patterns), OPEN_MIC)
    top = patterns.get(headline) or pattern_figures([])
    scored = wer_records(records)
    by_kind: dict[str, list[Record]] = defaultdict(list)
    for r in scored:
        by_kind[r.utterance.kind or "all"].append(r)
    out: dict[str, Any] = {
        "utterances": len(scored),
        "wer": wer_of(scored),
        "wer_pattern": headline,
        "wer_by_kind": {k: wer_of(v) for k, v in sorted(by_kind.items())},
        "latency_pattern": headline,
        "latency_ms": top["latency_ms"],
        "latency_ms_up_to_10s": top["latency_ms_up_to_10s"],
        "finalize_ms": top["finalize_ms"],
        "first_partial_ms": top["first_partial_ms"],
        "patterns": patterns,
        "offload": float(np.mean([r.escalated for r in scored])) if scored else 0.0,
        "errors": sorted({e for r in records for e in r.errors}),
    }
    segmentation = segmentation_figures(records)
    if segmentation is not None:
        out["segmentation"] = segmentation
    return out


def oracle(records: Sequence[Record]) -> dict[str, float]:
    """Per utterance the better of the edge's and the cloud's text (the cloud mode records both).

    An utterance the cloud did not answer in time counts with the edge's text on both sides, and
    ``cloud_unanswered`` says how many there were."""
    e = w = cloud_total = missing = 0
    for r in records:
        edge_e, words = errors(r.utterance.text, r.edge_text)
        cloud_e = errors(r.utterance.text, r.cloud_text)[0] if r.cloud_text else edge_e
        missing += not r.cloud_text
        cloud_total += cloud_e
        e += min(edge_e, cloud_e)
        w += words
    return {
        "wer": e / w if w else 0.0,
        "edge_wer": wer_of(records, "edge_text"),
        "cloud_wer": cloud_total / w if w else 0.0,
        "cloud_unanswered": float(missing),
    }


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    wer: float
    offload: float


def sweep_at(records: Sequence[Record], thresholds: Sequence[float]) -> list[SweepPoint]:
    """Escalate when P(edge wrong) > t and keep the likelier of edge and cloud, for each t.

    Uses records that carry both texts and both confidences (the cloud mode's)."""
    cached = []
    for r in records:
        if r.edge_p_wrong is None:
            continue
        edge_e, words = errors(r.utterance.text, r.edge_text)
        cloud_e, _ = errors(r.utterance.text, r.cloud_text)
        cached.append((r.edge_p_wrong, r.cloud_p_wrong, edge_e, words, cloud_e))
    total_words = sum(c[3] for c in cached) or 1
    out = []
    for t in thresholds:
        e = escalated = 0
        for p_edge, p_cloud, edge_e, _, cloud_e in cached:
            if p_edge > t:
                escalated += 1
                e += cloud_e if p_cloud is not None and p_cloud < p_edge else edge_e
            else:
                e += edge_e
        out.append(SweepPoint(float(t), e / total_words, escalated / max(1, len(cached))))
    return out


def target_replay(records: Sequence[Record], rate: float, fallback: float) -> SweepPoint:
    """The agent's target offload rate (``edge_agent.offload``) replayed over the records in their order:
    each utterance escalates when its P(edge wrong) is above the threshold the ones before it set (the
    calibration set's ``fallback`` until enough were seen), and keeps the likelier of edge and cloud.
    ``threshold`` is where it ended."""
    from edge_agent.offload import OffloadTarget

    target = OffloadTarget(rate, fallback)
    e = words = escalated = seen = 0
    for r in records:
        if r.edge_p_wrong is None:
            continue
        edge_e, n = errors(r.utterance.text, r.edge_text)
        cloud_e, _ = errors(r.utterance.text, r.cloud_text)
        seen, words = seen + 1, words + n
        if r.edge_p_wrong > target.threshold():
            escalated += 1
            better = r.cloud_p_wrong is not None and r.cloud_p_wrong < r.edge_p_wrong
            e += cloud_e if better else edge_e
        else:
            e += edge_e
        target.observe(r.edge_p_wrong)
    return SweepPoint(target.threshold(), e / max(1, words), escalated / max(1, seen))


def sweep(records: Sequence[Record], points: int = 60) -> list[SweepPoint]:
    """The sweep over thresholds at quantiles of the recorded P(edge wrong), plus 0 and 1."""
    scores = [r.edge_p_wrong for r in records if r.edge_p_wrong is not None]
    if not scores:
        return []
    candidates = sorted({0.0, 1.0, *np.quantile(scores, np.linspace(0, 1, points)).tolist()})
    return sweep_at(records, candidates)


def best_point(points: Sequence[SweepPoint], max_offload: float) -> SweepPoint:
    allowed = [p for p in points if p.offload <= max_offload + 1e-9]
    return min(allowed or points, key=lambda p: (p.wer, p.offload))
