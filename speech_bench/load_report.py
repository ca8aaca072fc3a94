"""Figures of a ``speech-load`` run: per-level summaries, refusal classification, RSS growth, tables.

Pure functions on what the load clients recorded (no sockets, no clocks), so the tests pin them exactly
and ``speech_bench.load`` only streams, times and collects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

BUSY_CLOSE = 1013
"""The edge's close code for "too many sessions" (RFC 6455 "try again later")."""
ADMITTED, BUSY, HANG = "admitted", "busy", "hang"
OK, REFUSED, TIMEOUT = "ok", "refused", "timeout"


def percentile(values: Sequence[float], q: float) -> float | None:
    """numpy's linear-interpolation percentile (the one speech-bench uses), to 1/1000 (of a ms: finer
    is float noise); None for no values."""
    return round(float(np.percentile(values, q)), 3) if values else None


# --- the edge: WebSocket sessions -------------------------------------------------------------------


def classify_admission(first_event: Mapping[str, Any] | None, close_code: int | None) -> str:
    """What the edge answered to a session's ``start``: ``admitted`` (``ready``), ``busy`` (a clean
    refusal: the ``busy`` error event, then close 1013), ``hang`` (no answer and no close within the
    client's timeout), or a label saying what else came (an unclean refusal is a finding, not a busy)."""
    if first_event is not None:
        kind = first_event.get("type")
        if kind == "ready":
            return ADMITTED
        if kind == "error":
            code = str(first_event.get("code"))
            if code == BUSY:
                return BUSY if close_code == BUSY_CLOSE else f"busy_close_{close_code}"
            return f"refused_{code}"
        return f"unexpected_{kind}"
    if close_code is None:
        return HANG
    if close_code == BUSY_CLOSE:
        return "busy_without_event"
    return f"closed_{close_code}"


def attribute(utterances: Sequence[tuple[float, float]], final: tuple[float, float]) -> int | None:
    """The utterance a final belongs to: the one whose speech span (seconds on the session's timeline)
    its [start, end] overlaps most; None when it overlaps none (a spurious final)."""
    best, best_overlap = None, 0.0
    for i, (start, end) in enumerate(utterances):
        overlap = min(end, final[1]) - max(start, final[0])
        if overlap > best_overlap:
            best, best_overlap = i, overlap
    return best


@dataclass(frozen=True)
class UtteranceResult:
    """One utterance streamed inside a session."""

    finals: int
    """Finals attributed to it by the session's end."""
    first_final_ms: float | None
    """Arrival of its first final, ms after its end of speech was due (None: no final came)."""
    cap_ms: float
    """Past this (ms after the end of speech) with no final the client moved on: a hang."""
    escalated: bool = False
    cloud_pending: bool = False

    @property
    def hang(self) -> bool:
        return self.first_final_ms is None or self.first_final_ms > self.cap_ms

    @property
    def latency_ms(self) -> float | None:
        """Final latency when exactly one final came within the cap (speech-bench's rule)."""
        return self.first_final_ms if self.finals == 1 and not self.hang else None


@dataclass
class SessionResult:
    """One WebSocket session of one simulated client."""

    stream: int
    admission: str
    """``classify_admission``'s verdict."""
    utterances: list[UtteranceResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Error event codes, and ``closed_<code>`` / ``no_end`` when the session did not end cleanly."""
    spurious_finals: int = 0


@dataclass(frozen=True)
class ProcessFigures:
    """A process over one level: CPU (% of one core, so up to 100 x cores) and RSS samples (MB)."""

    cpu_pct: float | None
    rss_start_mb: float | None
    rss_end_mb: float | None
    rss_peak_mb: float | None


def process_figures(cpu_s: float | None, wall_s: float, rss_mb: Sequence[float]) -> ProcessFigures:
    """``cpu_s``: CPU seconds the process spent over ``wall_s`` of wall time; ``rss_mb``: samples."""
    cpu = round(100 * cpu_s / wall_s, 1) if cpu_s is not None and wall_s > 0 else None
    if not rss_mb:
        return ProcessFigures(cpu, None, None, None)
    return ProcessFigures(cpu, rss_mb[0], rss_mb[-1], max(rss_mb))


@dataclass
class EdgeLevel:
    """Figures of N concurrent streams against the edge."""

    streams: int
    seconds: float
    sessions: int
    admitted: int
    busy: int
    """Clean refusals (``busy`` event, close 1013)."""
    refusals_other: dict[str, int]
    """Sessions refused any other way (an unclean refusal, a hang at ``start``...)."""
    utterances: int
    finals: int
    no_final: int
    multi_final: int
    hangs: int
    """Utterances with no final within the cap (``no_final`` ones and late ones)."""
    spurious_finals: int
    errors: dict[str, int]
    latency_ms: dict[str, float | None]
    escalated: int
    escalated_latency_ms: dict[str, float | None]
    cloud_pending: int
    processes: dict[str, ProcessFigures] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _p50_p95(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


def summarize_edge(
    streams: int,
    seconds: float,
    sessions: Sequence[SessionResult],
    processes: Mapping[str, ProcessFigures] | None = None,
) -> EdgeLevel:
    utterances = [u for s in sessions for u in s.utterances]
    latency = [u.latency_ms for u in utterances if u.latency_ms is not None]
    escalated = [u for u in utterances if u.escalated]
    escalated_latency = [u.latency_ms for u in escalated if u.latency_ms is not None]
    admissions = Counter(s.admission for s in sessions)
    return EdgeLevel(
        streams=streams,
        seconds=round(seconds, 1),
        sessions=len(sessions),
        admitted=admissions.pop(ADMITTED, 0),
        busy=admissions.pop(BUSY, 0),
        refusals_other=dict(sorted(admissions.items())),
        utterances=len(utterances),
        finals=sum(u.finals for u in utterances),
        no_final=sum(u.finals == 0 for u in utterances),
        multi_final=sum(u.finals >= 2 for u in utterances),
        hangs=sum(u.hang for u in utterances),
        spurious_finals=sum(s.spurious_finals for s in sessions),
        errors=dict(sorted(Counter(e for s in sessions for e in s.errors).items())),
        latency_ms=_p50_p95(latency),
        escalated=len(escalated),
        escalated_latency_ms=_p50_p95(escalated_latency),
        cloud_pending=sum(u.cloud_pending for u in utterances),
        processes=dict(processes or {}),
    )


def edge_verdict(level: EdgeLevel, limit: int) -> str:
    """``ok`` when the level did what the edge promises at this N, else what went wrong.

    Up to ``limit`` streams: every session admitted, one final per utterance, no hang, no error. Past it:
    the same for the admitted ones, and exactly ``streams - limit`` clean ``busy`` refusals."""
    problems = []
    expected_busy = max(0, level.streams - limit)
    if level.busy != expected_busy:
        problems.append(f"{level.busy} busy (expected {expected_busy})")
    problems += [f"{n} {what}" for what, n in level.refusals_other.items()]
    if level.hangs:
        problems.append(f"{level.hangs} hung")
    if level.multi_final:
        problems.append(f"{level.multi_final} split")
    if level.spurious_finals:
        problems.append(f"{level.spurious_finals} spurious")
    problems += [f"{n} {code}" for code, n in level.errors.items()]
    if level.admitted and not level.utterances:
        problems.append("no utterance streamed")
    return "ok" if not problems else "; ".join(problems)


# --- the cloud alone: gRPC Recognize and REST uploads -----------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` value; the cloud sends whole seconds (an HTTP date gives None)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def classify_cloud(interface: str, status: str, retry_after: str | None) -> str:
    """``ok``, ``refused`` (overload with a ``Retry-After``: HTTP 503, gRPC RESOURCE_EXHAUSTED),
    ``refused_without_retry_after``, ``timeout`` (the client's deadline passed: a hang) or ``error_<status>``.

    ``status``: the HTTP status code as text, or the gRPC status code's name."""
    if interface == "rest":
        ok, overload, timeouts = status == "200", status == "503", {"timeout"}
    else:
        ok, overload, timeouts = status == "OK", status == "RESOURCE_EXHAUSTED", {"DEADLINE_EXCEEDED"}
    if ok:
        return OK
    if overload:
        return REFUSED if parse_retry_after(retry_after) is not None else "refused_without_retry_after"
    if status in timeouts:
        return TIMEOUT
    return f"error_{status}"


@dataclass(frozen=True)
class CloudCall:
    outcome: str
    latency_ms: float


@dataclass
class CloudLevel:
    """N concurrent clients of one interface sending ~5 s utterances back to back."""

    interface: str
    streams: int
    seconds: float
    requests: int
    ok: int
    refused: int
    """Overload refusals with a ``Retry-After`` (the client waited that long, then sent again)."""
    errors: dict[str, int]
    """Everything else, by outcome (``timeout`` is a hang)."""
    latency_ms: dict[str, float | None]
    ok_per_s: float
    processes: dict[str, ProcessFigures] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize_cloud(
    interface: str,
    streams: int,
    seconds: float,
    calls: Sequence[CloudCall],
    processes: Mapping[str, ProcessFigures] | None = None,
) -> CloudLevel:
    outcomes = Counter(c.outcome for c in calls)
    ok = outcomes.pop(OK, 0)
    refused = outcomes.pop(REFUSED, 0)
    return CloudLevel(
        interface=interface,
        streams=streams,
        seconds=round(seconds, 1),
        requests=len(calls),
        ok=ok,
        refused=refused,
        errors=dict(sorted(outcomes.items())),
        latency_ms=_p50_p95([c.latency_ms for c in calls if c.outcome == OK]),
        ok_per_s=round(ok / seconds, 2) if seconds > 0 else 0.0,
        processes=dict(processes or {}),
    )


def cloud_verdict(level: CloudLevel, max_queue: int) -> str:
    """Up to ``max_queue`` clients: no refusal, no error. Past it: refusals allowed (each with a
    ``Retry-After``), still no error or timeout, and some requests answered."""
    problems = [f"{n} {what}" for what, n in level.errors.items()]
    if level.streams <= max_queue and level.refused:
        problems.append(f"{level.refused} refused below the queue bound")
    if not level.ok:
        problems.append("nothing answered")
    return "ok" if not problems else "; ".join(problems)


# --- the soak: RSS over time ------------------------------------------------------------------------


@dataclass(frozen=True)
class RssGrowth:
    start_mb: float
    peak_mb: float
    end_mb: float
    growth_mb: float
    """End minus start."""
    late_growth_mb: float
    """End minus the sample at half time: start-up and warm-up allocations are over by then, so growth
    here is what a longer run would keep adding."""


def rss_growth(samples: Sequence[tuple[float, float]]) -> RssGrowth:
    """From (seconds, MB) samples in time order (at least one)."""
    if not samples:
        raise ValueError("no RSS samples")
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    half = times[0] + (times[-1] - times[0]) / 2
    middle = next(v for t, v in samples if t >= half)
    return RssGrowth(
        start_mb=values[0],
        peak_mb=max(values),
        end_mb=values[-1],
        growth_mb=round(values[-1] - values[0], 1),
        late_growth_mb=round(values[-1] - middle, 1),
    )


def rss_bounded(growth: RssGrowth, tolerance_mb: float) -> bool:
    """Memory is bounded when the second half of the soak added at most ``tolerance_mb``."""
    return growth.late_growth_mb <= tolerance_mb


# --- tables ----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pair(figures: Mapping[str, float | None]) -> str:
    return f"{_ms(figures['p50'])} / {_ms(figures['p95'])}"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def _cpu(level: EdgeLevel | CloudLevel, name: str) -> str:
    figures = level.processes.get(name)
    return "-" if figures is None or figures.cpu_pct is None else f"{figures.cpu_pct:.0f}"


def _rss(level: EdgeLevel | CloudLevel, name: str) -> str:
    figures = level.processes.get(name)
    if figures is None or figures.rss_end_mb is None or figures.rss_peak_mb is None:
        return "-"
    return f"{figures.rss_end_mb:.0f} ({figures.rss_peak_mb:.0f})"


def edge_table(levels: Sequence[EdgeLevel], limit: int) -> list[str]:
    lines = [
        "| streams | sessions in / busy | utterances | finals | 0 / 2+ finals | hangs | errors "
        "| final p50 / p95 ms | escalated | escalated p50 / p95 ms | edge CPU % | cloud CPU % | client CPU % "
        "| edge RSS MB (peak) | cloud RSS MB (peak) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        cells = [
            str(lv.streams),
            f"{lv.admitted} / {lv.busy}" + "".join(f" + {n} {k}" for k, n in lv.refusals_other.items()),
            str(lv.utterances),
            str(lv.finals),
            f"{lv.no_final} / {lv.multi_final}",
            str(lv.hangs),
            _counts(lv.errors),
            _pair(lv.latency_ms),
            f"{lv.escalated}" + (f" ({lv.cloud_pending} pending)" if lv.cloud_pending else ""),
            _pair(lv.escalated_latency_ms),
            _cpu(lv, "edge"),
            _cpu(lv, "cloud"),
            _cpu(lv, "client"),
            _rss(lv, "edge"),
            _rss(lv, "cloud"),
            edge_verdict(lv, limit),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cloud_table(levels: Sequence[CloudLevel], max_queue: int) -> list[str]:
    lines = [
        "| interface | clients | requests | ok | refused (Retry-After) | errors | latency p50 / p95 ms "
        "| ok / s | cloud CPU % | client CPU % | cloud RSS MB (peak) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        cells = [
            lv.interface,
            str(lv.streams),
            str(lv.requests),
            str(lv.ok),
            str(lv.refused),
            _counts(lv.errors),
            _pair(lv.latency_ms),
            f"{lv.ok_per_s:.2f}",
            _cpu(lv, "cloud"),
            _cpu(lv, "client"),
            _rss(lv, "cloud"),
            cloud_verdict(lv, max_queue),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def soak_table(growth: Mapping[str, RssGrowth], tolerance_mb: float) -> list[str]:
    lines = [
        "| process | start MB | peak MB | end MB | growth MB | second-half growth MB | bounded |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in growth.items():
        bounded = "yes" if rss_bounded(g, tolerance_mb) else f"no (> {tolerance_mb:g} MB)"
        lines.append(
            f"| {name} | {g.start_mb:.0f} | {g.peak_mb:.0f} | {g.end_mb:.0f} | {g.growth_mb:+.1f} "
            f"| {g.late_growth_mb:+.1f} | {bounded} |"
        )
    return lines
