"""``speech-load``: concurrent real-time clients against the edge (cloud behind it) and the cloud alone.

``speech-load edge`` starts a cloud server and an edge agent on free loopback ports (or measures running
ones: ``--edge-url``) and, for each N in ``--streams``, runs N simulated microphones for ``--seconds``:
each opens a WebSocket session and streams utterances from the manifests back to back in real time,
open-mic (0.5 s of silence, the speech, then silence until the utterance's final arrives, as
``speech-bench`` does for one utterance), then the next utterance on the same session
(``--session-utterances K`` reconnects after every K). Per level: sessions admitted and refused
(``busy``: error event + close 1013), utterances, finals (one each expected), hangs (no final within
``--final-cap-s``), errors, final latency from the end of speech, the escalated utterances' latency, CPU
and RSS of the edge and cloud processes. ``--soak MINUTES`` then holds ``--soak-streams`` clients for
that long and samples both RSS curves (CSV and PNG under ``--soak-dir``).

``speech-load cloud`` starts a cloud server (or takes ``--cloud-target``/``--cloud-url``) and, per N,
runs N clients sending ~5 s utterances back to back over gRPC ``Recognize`` and over REST
``POST /v1/audio/transcriptions``: latency p50/p95, overload refusals (RESOURCE_EXHAUSTED / 503 with a
``Retry-After``, which the client honours), errors and timeouts.

Every connection goes to the services given or started here; every call has a deadline; levels end by
themselves. Figures are printed and, with ``--benchmarks-md``, written as sections of that file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from cloud_server.settings import CloudSettings
from edge_agent.settings import EdgeSettings
from speech_bench.load_report import (
    ADMITTED,
    OK,
    REFUSED,
    CloudCall,
    CloudLevel,
    EdgeLevel,
    ProcessFigures,
    SessionResult,
    UtteranceResult,
    attribute,
    classify_admission,
    classify_cloud,
    cloud_table,
    edge_table,
    parse_retry_after,
    process_figures,
    rss_growth,
    soak_table,
    summarize_cloud,
    summarize_edge,
)
from speech_bench.manifest import Utterance
from speech_bench.services import status_mb
from speech_bench.streaming import FRAME_S, LEAD_S, StreamPlan, load_audio, pcm16, plan_stream

RATE = 16000
"""Everything is sent at 16 kHz, so one session can carry clips recorded at any rate."""
FRAME = round(RATE * FRAME_S)
START = json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le"})
STOP = json.dumps({"type": "stop"})
DEFAULT_STREAMS = (1, 2, 4, 8, 16)
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFESTS = (ROOT / ".cache" / "bench-sets" / "eval-subset.jsonl",)
FALLBACK_MANIFESTS = (
    ROOT / ".cache" / "test-audio" / "pocketsphinx" / "manifest.jsonl",
    ROOT / ".cache" / "test-audio" / "tts" / "manifest.jsonl",
)
EDGE_BEGIN, EDGE_END = "<!-- load-edge:begin -->", "<!-- load-edge:end -->"
SOAK_BEGIN, SOAK_END = "<!-- load-soak:begin -->", "<!-- load-soak:end -->"
CLOUD_BEGIN, CLOUD_END = "<!-- load-cloud:begin -->", "<!-- load-cloud:end -->"


# --- audio ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    utterance: Utterance
    speech: np.ndarray
    """16 kHz float32 samples from the clip's start up to its end of speech."""
    plan: StreamPlan
    """How a client streams it: leading silence, then ``speech`` (``speech_bench.streaming``)."""


def load_clips(manifests: Sequence[Path], limit: int = 0, max_speech_s: float = 15.0) -> list[Clip]:
    """The manifests' utterances at 16 kHz, without those whose speech is longer than ``max_speech_s``
    (the edge cuts an utterance at ``EDGE_MAX_UTTERANCE_S``, 20 s: two finals would not be a load
    effect)."""
    import soxr

    from speech_bench.manifest import load_manifests

    clips = []
    for utterance in load_manifests(list(manifests)):
        audio, rate = load_audio(utterance)
        if rate != RATE:
            audio = soxr.resample(audio, rate, RATE).astype(np.float32)
        plan = plan_stream(audio, RATE, utterance)
        if (plan.speech_end - plan.lead) / RATE > max_speech_s:
            continue
        clips.append(Clip(utterance, audio[: plan.speech_end - plan.lead], plan))
        if limit and len(clips) >= limit:
            break
    if not clips:
        raise SystemExit("no utterance to stream: check the manifests and --max-speech-s")
    return clips


def fixed_length(
    clips: Sequence[np.ndarray], seconds: float, rate: int = RATE, gap_s: float = 0.3
) -> list[np.ndarray]:
    """One utterance of exactly ``seconds`` per clip: the clip, then the next ones (cyclically) after
    ``gap_s`` of silence each, cut at ``seconds``; so every request carries the same audio length."""
    target, gap = round(seconds * rate), np.zeros(round(gap_s * rate), np.float32)
    out = []
    for i in range(len(clips)):
        parts, length, j = [clips[i]], len(clips[i]), i + 1
        while length < target:
            nxt = clips[j % len(clips)]
            parts += [gap, nxt]
            length += len(gap) + len(nxt)
            j += 1
        out.append(np.concatenate(parts)[:target].astype(np.float32))
    return out


def wav_bytes(audio: np.ndarray, rate: int = RATE) -> bytes:
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


# --- processes --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (/proc/PID/stat); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident set size now (VmRSS), MB; None when the process is gone."""
    mb = status_mb(pid, "VmRSS")
    return None if mb is None else round(mb, 1)


class ProcessWatch:
    """CPU and RSS of some processes over one level: CPU time at both ends, RSS every ``interval_s``."""

    def __init__(self, pids: Mapping[str, int], interval_s: float) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.rows: list[tuple[float, dict[str, float]]] = []
        """(seconds since the start, {process: RSS MB})."""
        self.wall_s = 0.0
        self._cpu0: dict[str, float | None] = {}
        self._cpu_s: dict[str, float | None] = {}
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        values = {name: rss_mb(pid) for name, pid in self.pids.items()}
        self.rows.append(
            (round(time.monotonic() - self._t0, 2), {k: v for k, v in values.items() if v is not None})
        )

    async def _run(self) -> None:
        while True:  # a periodic sample, not a wait for data: nothing announces memory growth
            await asyncio.sleep(self.interval_s)
            self._sample()

    async def __aenter__(self) -> ProcessWatch:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._sample()
        self._task = asyncio.create_task(self._run(), name="process-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        self.wall_s = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            before, after = self._cpu0.get(name), cpu_seconds(pid)
            self._cpu_s[name] = after - before if before is not None and after is not None else None

    def series(self, name: str) -> list[tuple[float, float]]:
        return [(t, values[name]) for t, values in self.rows if name in values]

    def figures(self) -> dict[str, ProcessFigures]:
        return {
            name: process_figures(self._cpu_s.get(name), self.wall_s, [v for _, v in self.series(name)])
            for name in self.pids
        }


# --- the edge: WebSocket clients ------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeLoad:
    """How the simulated microphones stream (the same for every level)."""

    url: str
    plans: Sequence[StreamPlan]
    final_cap_s: float = 15.0
    """No final this long after an utterance's end of speech: a hang; the client goes on."""
    session_utterances: int = 0
    """Reconnect after this many utterances (0: one session per client for the whole level)."""
    stagger_s: float = 0.25
    """Client i starts i x this after the first, so N clients do not speak in lockstep."""
    connect_timeout_s: float = 10.0
    end_timeout_s: float = 30.0
    """After ``stop``, the ``end`` event must come within this (else ``no_end``)."""


@dataclass
class _Live:
    """An utterance being streamed: where its speech is, and the finals attributed to it so far."""

    span: tuple[float, float]
    """Speech start and end, seconds on the session's timeline (what the edge's finals report)."""
    speech_end_at: float
    """Monotonic time its last speech sample was due."""
    arrivals: list[float] = field(default_factory=list)
    escalated: bool = False
    pending: bool = False
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the first final that arrives after the end of speech."""

    def result(self, cap_s: float) -> UtteranceResult:
        after = [t for t in self.arrivals if t >= self.speech_end_at]
        first = round(1000 * (after[0] - self.speech_end_at), 1) if after else None
        return UtteranceResult(len(self.arrivals), first, 1000 * cap_s, self.escalated, self.pending)


async def _admission(ws: Any, timeout_s: float) -> str:
    """Send ``start`` and classify the first answer (and, for a refusal, the close that follows)."""
    from websockets.exceptions import ConnectionClosed

    first: dict[str, Any] | None = None
    # A refusing edge sends its error event and closes without reading ``start``: when the close is
    # already in, the send fails, yet the event is still waiting to be read.
    with contextlib.suppress(ConnectionClosed):
        await ws.send(START)
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    except ConnectionClosed:
        pass  # refused before start was read: the close code tells
    except TimeoutError:
        return classify_admission(None, None)
    except ValueError:
        first = {"type": "not_json"}
    if first is None or first.get("type") != "ready":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), timeout_s)
    return classify_admission(first, ws.close_code)


async def _read(ws: Any, lives: list[_Live], result: SessionResult) -> None:
    """Attribute finals to utterances by their spans, collect error codes; return at ``end``."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            now = time.monotonic()
            try:
                event = json.loads(message)
            except ValueError:
                result.errors.append("not_json")
                continue
            kind = event.get("type")
            if kind == "final":
                span = (float(event.get("start", 0.0)), float(event.get("end", 0.0)))
                index = attribute([live.span for live in lives], span)
                if index is None:
                    result.spurious_finals += 1
                    continue
                live = lives[index]
                live.arrivals.append(now)
                live.escalated |= bool(event.get("escalated"))
                live.pending |= bool(event.get("cloud_pending"))
                if now >= live.speech_end_at:
                    live.answered.set()
            elif kind == "error":
                result.errors.append(str(event.get("code")))
            elif kind == "end":
                return
    except ConnectionClosed:
        pass
    result.errors.append(f"closed_{ws.close_code}")  # closed before the end event


async def _session(
    load: EdgeLoad, stream: int, order: Iterator[int], deadline: float, out: list[SessionResult]
) -> SessionResult:
    """One WebSocket session: utterances back to back, open-mic, at least one, until ``deadline``.

    The result joins ``out`` at once and is filled in place, so a level cut short keeps what was measured."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    result = SessionResult(stream, "connecting")
    out.append(result)
    try:
        ws = await connect(load.url, open_timeout=load.connect_timeout_s, max_size=2**22, close_timeout=5)
    except InvalidStatus as exc:
        result.admission = f"http_{exc.response.status_code}"
        return result
    except (OSError, TimeoutError, InvalidHandshake):
        result.admission = "connect_failed"
        return result
    async with ws:
        result.admission = await _admission(ws, load.connect_timeout_s)
        if result.admission == ADMITTED:
            await _utterances(ws, load, order, deadline, result)
    return result


async def _utterances(
    ws: Any, load: EdgeLoad, order: Iterator[int], deadline: float, result: SessionResult
) -> None:
    """Stream utterances on an admitted session, then ``stop`` and wait for ``end``."""
    from websockets.exceptions import ConnectionClosed

    lives: list[_Live] = []
    reader = asyncio.create_task(_read(ws, lives, result), name="load-read")
    t0 = time.monotonic()
    sent = 0  # samples on the session's timeline

    async def pace(sample: int) -> None:
        """A frame leaves when its last sample is due, as from a microphone."""
        await asyncio.sleep(max(0.0, t0 + sample / RATE - time.monotonic()))

    try:
        try:
            for k, index in enumerate(order):
                limit = load.session_utterances and k >= load.session_utterances
                if (k and time.monotonic() >= deadline) or limit or reader.done():
                    break
                plan = load.plans[index]
                live = _Live(
                    ((sent + plan.speech_start) / RATE, (sent + plan.speech_end) / RATE),
                    t0 + (sent + plan.speech_end) / RATE,
                )
                lives.append(live)
                size = 2 * plan.frame
                for i in range(plan.frames):
                    await pace(sent + (i + 1) * plan.frame)
                    await ws.send(plan.pcm[i * size : (i + 1) * size])
                sent += plan.speech_end
                cap_at = live.speech_end_at + load.final_cap_s
                silence = bytes(2 * FRAME)
                while not live.answered.is_set() and not reader.done() and time.monotonic() < cap_at:
                    await pace(sent + FRAME)
                    await ws.send(silence)
                    sent += FRAME
            await ws.send(STOP)
        except ConnectionClosed:
            pass  # the reader records how the session closed
        try:
            await asyncio.wait_for(reader, load.end_timeout_s)
        except TimeoutError:
            result.errors.append("no_end")
    finally:
        # Also on cancellation (the level's overall bound): keep what was measured.
        reader.cancel()
        result.utterances = [live.result(load.final_cap_s) for live in lives]


async def _client(
    load: EdgeLoad, stream: int, streams: int, deadline: float, out: list[SessionResult]
) -> None:
    """One simulated microphone: sessions until the deadline (one, unless ``session_utterances``)."""
    await asyncio.sleep(stream * load.stagger_s)
    count = len(load.plans)
    # Clients start at different clips so they do not all say the same thing at the same moment.
    first = stream * max(1, count // max(1, streams))
    order = itertools.cycle([(first + i) % count for i in range(count)])
    while True:
        result = await _session(load, stream, order, deadline, out)
        if result.admission != ADMITTED or not load.session_utterances or time.monotonic() >= deadline:
            return


async def edge_level(
    load: EdgeLoad, streams: int, seconds: float, pids: Mapping[str, int], sample_s: float = 1.0
) -> tuple[EdgeLevel, ProcessWatch]:
    """N clients for ``seconds`` (utterances under way then finish); their figures and the process
    samples. Bounded: each wait has its own timeout, and the whole level ``seconds`` + 180 s."""
    sessions: list[SessionResult] = []
    deadline = time.monotonic() + seconds
    async with ProcessWatch(pids, sample_s) as watch:
        clients = [_client(load, i, streams, deadline, sessions) for i in range(streams)]
        try:
            await asyncio.wait_for(asyncio.gather(*clients), seconds + streams * load.stagger_s + 180)
        except TimeoutError:
            # Sessions still under way were cancelled; what they measured is in ``sessions``.
            sessions.append(SessionResult(-1, "level_timeout"))
    return summarize_edge(streams, watch.wall_s, sessions, watch.figures()), watch


async def wait_idle(http_url: str, timeout_s: float = 15.0) -> bool:
    """Wait until the edge reports no open connection, so a level's refusals are its own and not the
    previous level's connections still closing. The edge offers no push for this: poll its /health."""
    import httpx

    give_up = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < give_up:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await client.get(f"{http_url}/health")).json().get("connections") == 0:
                    return True
            await asyncio.sleep(0.2)
    return False


def http_of(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


# --- the cloud alone: gRPC and REST clients --------------------------------------------------------


@dataclass(frozen=True)
class CloudLoad:
    grpc_target: str
    rest_url: str
    utterances: Sequence[np.ndarray]
    """16 kHz float32, all of the same length (``fixed_length``)."""
    request_timeout_s: float = 60.0
    """The client's deadline per request; past it the request counts as a timeout (a hang)."""
    error_pause_s: float = 0.5
    """After an error other than a refusal, so a dead server is not hammered in a tight loop."""


Call = Callable[[int], Awaitable[tuple[str, str | None]]]
"""Send request k; (status as text, Retry-After value or None)."""


async def _cloud_client(
    interface: str, call: Call, first: int, deadline: float, pause_s: float, out: list[CloudCall]
) -> None:
    """Requests back to back until the deadline (at least one), waiting out each Retry-After."""
    k = first
    while True:
        started = time.monotonic()
        status, retry_after = await call(k)
        outcome = classify_cloud(interface, status, retry_after)
        out.append(CloudCall(outcome, round(1000 * (time.monotonic() - started), 1)))
        k += 1
        wait = (parse_retry_after(retry_after) or 0.0) if outcome == REFUSED else 0.0
        wait = wait if outcome in (OK, REFUSED) else pause_s
        if time.monotonic() + wait >= deadline:
            return
        await asyncio.sleep(wait)


def _grpc_call(load: CloudLoad, channel: Any) -> Call:
    import grpc

    from asr_common.protos import speech_pb2, speech_pb2_grpc

    stub = speech_pb2_grpc.CloudRecognizerStub(channel)
    audio = [pcm16(u) for u in load.utterances]
    # The edge's own request (language, word times), as an escalation sends it.
    config = speech_pb2.RecognitionConfig(language="en", n_best=1, word_timestamps=True, sample_rate_hz=RATE)

    async def call(k: int) -> tuple[str, str | None]:
        # A fresh utterance id: the cloud replays the answer to a repeated (id, audio) instead of decoding.
        context = speech_pb2.EdgeContext(utterance_id=f"load-{uuid.uuid4().hex}")
        request = speech_pb2.RecognizeRequest(config=config, audio=audio[k % len(audio)], context=context)
        try:
            await stub.Recognize(request, timeout=load.request_timeout_s)
        except grpc.aio.AioRpcError as exc:
            trailing = exc.trailing_metadata() or ()
            retry = next((str(v) for key, v in trailing if key == "retry-after"), None)
            return exc.code().name, retry
        return "OK", None

    return call


def _rest_call(load: CloudLoad, client: Any) -> Call:
    import httpx

    files = [wav_bytes(u) for u in load.utterances]
    url = f"{load.rest_url}/v1/audio/transcriptions"

    async def call(k: int) -> tuple[str, str | None]:
        try:
            response = await client.post(
                url,
                files={"file": ("utterance.wav", files[k % len(files)], "audio/wav")},
                data={"model": "whisper-1", "language": "en"},
            )
        except httpx.TimeoutException:
            return "timeout", None
        except httpx.TransportError as exc:
            return type(exc).__name__, None
        return str(response.status_code), response.headers.get("retry-after")

    return call


async def cloud_level(
    load: CloudLoad,
    interface: str,
    streams: int,
    seconds: float,
    pids: Mapping[str, int],
    sample_s: float = 1.0,
) -> CloudLevel:
    """N clients of one interface for ``seconds`` (requests under way then finish)."""
    import grpc
    import httpx

    calls: list[CloudCall] = []
    deadline = time.monotonic() + seconds
    async with contextlib.AsyncExitStack() as stack:
        if interface == "grpc":
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(load.grpc_target))
            call = _grpc_call(load, channel)
        else:
            limits = httpx.Limits(max_connections=streams + 1)
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=load.request_timeout_s, limits=limits)
            )
            call = _rest_call(load, client)
        async with ProcessWatch(pids, sample_s) as watch:
            clients = [
                _cloud_client(interface, call, i, deadline, load.error_pause_s, calls) for i in range(streams)
            ]
            await asyncio.gather(*clients)
    return summarize_cloud(interface, streams, watch.wall_s, calls, watch.figures())


# --- reports ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _machine_sentence(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (
        f"Run {report['created']} on {m['platform']}, {m['cpus']} cores, Python {m['python']} "
        f"(1-minute load average {m['load_average_1min']:g} at the start)."
    )


def edge_section(report: dict[str, Any]) -> str:
    s = report["settings"]
    per_session = (
        f"reconnecting after every {s['session_utterances']} utterances"
        if s["session_utterances"]
        else "one session per client for the whole level"
    )
    cloud = f"Whisper {s['cloud_model']} int8, {s['cloud_threads']} threads" if s["cloud"] else "none"
    model = s["edge_model"] or "default (Moonshine base)"
    limit = f"advertised limit `EDGE_MAX_SESSIONS={s['max_sessions']}`"
    if s.get("edge_url"):
        services = f" Edge: the running one at `{s['edge_url']}`, {limit}, with its own cloud."
    else:
        services = (
            f" Edge: `{s['edge_config']}` configuration, model {model}, {limit}; cloud: {cloud}; "
            "all on this machine."
        )
    lines = [
        EDGE_BEGIN,
        "## Load: concurrent WebSocket streams against the edge, cloud behind it",
        "",
        _machine_sentence(report) + services,
        "",
        f"Pattern: each of N clients streams utterances ({s['clips']} clips of {', '.join(s['manifests'])}) "
        f"back to back in real time, 100 ms PCM16 frames at 16 kHz, open-mic: {LEAD_S:g} s of silence, the "
        f"speech, then silence until the utterance's final (none within {s['final_cap_s']:g} s: a hang), "
        f"then the next one; {per_session}. Client i starts {s['stagger_s']:g} s x i after the first, at a "
        f"different clip. A level lasts {s['seconds']:g} s (utterances under way finish). Final latency "
        "runs from the end of speech (audio timeline) to the final, on utterances with exactly one final; "
        "*escalated* are those whose final says `escalated`. CPU is % of one core over the level "
        "(*client* is this tool); RSS at the level's end (peak of 1 s samples). Verdict: up to the limit "
        "every session admitted, one final per utterance, no hang, no error; past it, the same for the "
        "admitted sessions and exactly N - limit clean `busy` refusals (error event, close 1013).",
        "",
        f"Reproduce: `{report['command']}`",
        "",
        *edge_table([EdgeLevel(**_level_fields(lv)) for lv in report["levels"]], s["max_sessions"]),
        EDGE_END,
    ]
    return "\n".join(lines)


def soak_section(report: dict[str, Any], plot: str | None, csv: str) -> str:
    soak = report["soak"]
    level = soak["level"]
    lat = level["latency_ms"]
    lines = [
        SOAK_BEGIN,
        "## Soak: edge and cloud memory under constant load",
        "",
        _machine_sentence(report)
        + f" {soak['streams']} clients streamed for {soak['minutes']:g} minutes as in the load section "
        f"above; RSS sampled every {soak['sample_s']:g} s. {level['utterances']} utterances, "
        f"{level['finals']} finals, {level['hangs']} hangs, errors {level['errors'] or 'none'}, "
        f"final latency p50/p95 {_fmt(lat['p50'])}/{_fmt(lat['p95'])} ms. *Second-half growth* is RSS at "
        f"the end minus RSS at half time (warm-up is over by then); bounded = at most "
        f"{soak['tolerance_mb']:g} MB.",
        "",
        f"Reproduce: `{report['command']}`",
        "",
        *soak_table(
            {name: _growth(g) for name, g in soak["rss_growth"].items()},
            soak["tolerance_mb"],
        ),
        "",
        f"RSS curve: [{csv}]({csv})" + (f"; ![RSS over the soak]({plot})" if plot else ""),
        SOAK_END,
    ]
    return "\n".join(lines)


def cloud_section(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        CLOUD_BEGIN,
        "## Load: the cloud alone, concurrent gRPC `Recognize` and REST uploads",
        "",
        _machine_sentence(report)
        + f" Cloud: Whisper {s['cloud_model']} int8, {s['cloud_threads']} threads, {s['workers']} inference "
        f"worker(s), `CLOUD_MAX_QUEUE={s['max_queue']}`.",
        "",
        f"Pattern: N clients each send {s['utterance_s']:g} s utterances (clips of "
        f"{', '.join(s['manifests'])} joined with 0.3 s pauses, cut at {s['utterance_s']:g} s) back to back "
        f"for {s['seconds']:g} s per level: gRPC `Recognize` (16 kHz PCM16, language en, word times, one "
        "hypothesis, a fresh utterance id each) or REST `POST /v1/audio/transcriptions` (WAV, multipart, "
        "`model=whisper-1`, `language=en`). A refusal (RESOURCE_EXHAUSTED / 503 with `Retry-After`) is "
        "counted and the client waits the `Retry-After` before its next request. Latency is per answered "
        f"request (client deadline {s['request_timeout_s']:g} s: past it a *timeout*, i.e. a hang). "
        "Verdict: up to the queue bound no refusal and no error; past it refusals only with `Retry-After`.",
        "",
        f"Reproduce: `{report['command']}`",
        "",
        *cloud_table([CloudLevel(**_level_fields(lv)) for lv in report["levels"]], s["max_queue"]),
        CLOUD_END,
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _level_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A level's JSON back to its dataclass fields (processes as ProcessFigures)."""
    return {**data, "processes": {k: ProcessFigures(**v) for k, v in data["processes"].items()}}


def _growth(data: dict[str, Any]) -> Any:
    from speech_bench.load_report import RssGrowth

    return RssGrowth(**data)


def write_soak_curve(watch: ProcessWatch, directory: Path) -> tuple[Path, Path | None]:
    """The RSS samples as CSV, and a PNG when matplotlib is installed (the bench extra)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(watch.pids)
    csv = directory / "load_soak_rss.csv"
    rows = ["seconds," + ",".join(f"{n}_rss_mb" for n in names)]
    rows += [f"{t:.1f}," + ",".join(str(v.get(n, "")) for n in names) for t, v in watch.rows]
    csv.write_text("\n".join(rows) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return csv, None
    # One panel per process, each on its own scale: a few MB of growth would be a flat line on an axis
    # that also holds the edge's hundreds of MB.
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.2 + 1.6 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        series = watch.series(name)
        ax.plot([t / 60 for t, _ in series], [v for _, v in series])
        ax.set_ylabel(f"{name} MB")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("RSS during the soak")
    axes[-1, 0].set_xlabel("minutes")
    fig.tight_layout()
    png = directory / "load_soak_rss.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return csv, png


# --- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from speech_bench.cli import MODES

    p = argparse.ArgumentParser(prog="speech-load", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="target", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "manifests",
        nargs="*",
        type=Path,
        help="NeMo manifests (default: the eval subset, else the test clips)",
    )
    common.add_argument("--limit", type=int, default=0, help="only the first N usable utterances")
    common.add_argument(
        "--streams",
        nargs="*",
        type=int,
        default=list(DEFAULT_STREAMS),
        help="concurrency levels (edge: none = the soak only)",
    )
    common.add_argument("--seconds", type=float, default=60.0, help="duration of each level")
    common.add_argument("--cloud-model", default="base")
    common.add_argument("--threads", type=int, default=2, help="threads of the cloud model")
    common.add_argument("--cloud-target", help="a running cloud's gRPC host:port (nothing started)")
    common.add_argument("--cloud-pid", type=int, help="that cloud's process id, for its CPU and RSS")
    common.add_argument("--out", type=Path, help="write the figures as JSON here")
    common.add_argument("--benchmarks-md", type=Path, help="write the tables as sections of this file")
    common.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling period during levels")

    edge = sub.add_parser("edge", parents=[common], help="WebSocket streams against the edge")
    edge.add_argument("--edge-url", help="a running edge's ws://host:port/v1/stream (nothing started)")
    edge.add_argument("--edge-pid", type=int, help="that edge's process id, for its CPU and RSS")
    edge.add_argument("--edge-config", choices=list(MODES), default="pasu", help="speech-bench's modes")
    edge.add_argument("--edge-model", help="EDGE_MODEL of the edge started here")
    edge.add_argument(
        "--max-sessions",
        type=int,
        default=EdgeSettings.model_fields["max_sessions"].default,
        help="EDGE_MAX_SESSIONS (of a running edge: what it says)",
    )
    edge.add_argument("--max-speech-s", type=float, default=15.0, help="skip longer utterances")
    edge.add_argument("--final-cap-s", type=float, default=15.0, help="no final this long after: a hang")
    edge.add_argument("--session-utterances", type=int, default=0, help="reconnect after K (0: never)")
    edge.add_argument("--stagger-s", type=float, default=0.25, help="client i starts i x this later")
    edge.add_argument("--soak", type=float, default=0.0, metavar="MINUTES", help="then a soak this long")
    edge.add_argument("--soak-streams", type=int, default=4, help="clients during the soak")
    edge.add_argument("--soak-sample-s", type=float, default=5.0, help="RSS sampling period of the soak")
    edge.add_argument(
        "--soak-tolerance-mb", type=float, default=20.0, help="second-half RSS growth still called bounded"
    )
    edge.add_argument("--soak-dir", type=Path, default=Path("docs/bench"), help="RSS curve CSV and PNG")

    cloud = sub.add_parser("cloud", parents=[common], help="gRPC Recognize and REST uploads, cloud alone")
    cloud.add_argument("--cloud-url", help="that running cloud's REST base URL (http://host:port)")
    cloud.add_argument("--interfaces", nargs="+", choices=["grpc", "rest"], default=["grpc", "rest"])
    cloud.add_argument("--utterance-s", type=float, default=5.0, help="audio per request")
    cloud.add_argument("--workers", type=int, default=1, help="CLOUD_WORKERS of the cloud started here")
    cloud.add_argument(
        "--max-queue",
        type=int,
        default=CloudSettings.model_fields["max_queue"].default,
        help="CLOUD_MAX_QUEUE (of a running cloud: what it says)",
    )
    cloud.add_argument("--request-timeout-s", type=float, default=60.0, help="client deadline per request")
    return p


def _manifests(given: Sequence[Path]) -> list[Path]:
    if given:
        return list(given)
    for choice in (DEFAULT_MANIFESTS, FALLBACK_MANIFESTS):
        if all(m.exists() for m in choice):
            return list(choice)
    raise SystemExit(
        "give a manifest (or build them: scripts/build_bench_sets.py, scripts/build_test_audio.py)"
    )


def _base_report(
    args: argparse.Namespace, argv: Sequence[str] | None, manifests: list[Path]
) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "command": "speech-load " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "manifests": [os.path.relpath(m) for m in manifests],
            "seconds": args.seconds,
            "streams": args.streams,
            "cloud_model": args.cloud_model,
            "cloud_threads": args.threads,
        },
    }


def run_edge(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    from speech_bench import services
    from speech_bench.cli import EDGE_ONLY, MODES

    manifests = _manifests(args.manifests)
    clips = load_clips(manifests, args.limit, args.max_speech_s)
    report = _base_report(args, argv, manifests)
    wants_cloud = args.edge_config not in EDGE_ONLY
    report["settings"].update(
        edge_config=args.edge_config,
        edge_model=args.edge_model,
        max_sessions=args.max_sessions,
        clips=len(clips),
        final_cap_s=args.final_cap_s,
        session_utterances=args.session_utterances,
        stagger_s=args.stagger_s,
        cloud=wants_cloud or bool(args.cloud_target),
        edge_url=args.edge_url,
    )
    pids: dict[str, int] = {"client": os.getpid()}
    started: list[services.Service] = []
    with tempfile.TemporaryDirectory(prefix="speech-load-") as tmp:
        try:
            if args.edge_url:
                url = args.edge_url
                pids.update({k: v for k, v in (("edge", args.edge_pid), ("cloud", args.cloud_pid)) if v})
            else:
                target = args.cloud_target or ""
                if args.cloud_pid:
                    pids["cloud"] = args.cloud_pid
                if wants_cloud and not target:
                    cloud = services.start_cloud(args.cloud_model, args.threads, Path(tmp) / "cloud.log")
                    started.append(cloud)
                    target = cloud.extra["grpc"]
                    assert cloud.proc is not None
                    pids["cloud"] = cloud.proc.pid
                edge = services.start_edge(
                    MODES[args.edge_config], target if wants_cloud else "", Path(tmp) / "queue.sqlite3",
                    Path(tmp) / "edge.log", model=args.edge_model,
                    env={"EDGE_MAX_SESSIONS": str(args.max_sessions)},
                )  # fmt: skip
                started.append(edge)
                assert edge.proc is not None
                pids["edge"] = edge.proc.pid
                url = edge.url.replace("http://", "ws://") + "/v1/stream"
            load = EdgeLoad(
                url, [c.plan for c in clips], args.final_cap_s, args.session_utterances, args.stagger_s
            )
            asyncio.run(_edge_levels(load, args, pids, report))
        finally:
            for service in reversed(started):
                service.stop()
    return report


async def _edge_levels(
    load: EdgeLoad, args: argparse.Namespace, pids: Mapping[str, int], report: dict[str, Any]
) -> None:
    report["levels"] = []
    http = http_of(load.url)
    for streams in args.streams:
        if not await wait_idle(http):
            print("warning: the edge still reports open connections", file=sys.stderr)
        level, _ = await edge_level(load, streams, args.seconds, pids, args.sample_s)
        report["levels"].append(level.to_json())
        print(f"edge N={streams}: {level.utterances} utterances, {level.finals} finals, "
              f"p50/p95 {_fmt(level.latency_ms['p50'])}/{_fmt(level.latency_ms['p95'])} ms, "
              f"{level.busy} busy", file=sys.stderr, flush=True)  # fmt: skip
    if args.soak > 0:
        await wait_idle(http)
        level, watch = await edge_level(load, args.soak_streams, 60 * args.soak, pids, args.soak_sample_s)
        growth = {name: rss_growth(watch.series(name)) for name in pids if watch.series(name)}
        csv, png = write_soak_curve(watch, args.soak_dir)
        report["soak"] = {
            "streams": args.soak_streams,
            "minutes": args.soak,
            "sample_s": args.soak_sample_s,
            "tolerance_mb": args.soak_tolerance_mb,
            "level": level.to_json(),
            "rss_growth": {name: asdict(g) for name, g in growth.items()},
            "csv": str(csv),
            "png": str(png) if png else None,
        }


def run_cloud(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    from speech_bench import services

    manifests = _manifests(args.manifests)
    clips = load_clips(manifests, args.limit)
    utterances = fixed_length([c.speech for c in clips], args.utterance_s)[:16]
    report = _base_report(args, argv, manifests)
    report["settings"].update(
        workers=args.workers,
        max_queue=args.max_queue,
        utterance_s=args.utterance_s,
        request_timeout_s=args.request_timeout_s,
        interfaces=args.interfaces,
    )
    pids: dict[str, int] = {"client": os.getpid()}
    cloud = None
    with tempfile.TemporaryDirectory(prefix="speech-load-") as tmp:
        try:
            if args.cloud_target or args.cloud_url:
                if not (args.cloud_target and args.cloud_url):
                    raise SystemExit(
                        "a running cloud needs both --cloud-target (gRPC) and --cloud-url (REST)"
                    )
                target, rest = args.cloud_target, args.cloud_url.rstrip("/")
                if args.cloud_pid:
                    pids["cloud"] = args.cloud_pid
            else:
                cloud = services.start_cloud(
                    args.cloud_model, args.threads, Path(tmp) / "cloud.log",
                    env={"CLOUD_MAX_QUEUE": str(args.max_queue), "CLOUD_WORKERS": str(args.workers)},
                )  # fmt: skip
                assert cloud.proc is not None
                target, rest, pids["cloud"] = cloud.extra["grpc"], cloud.url, cloud.proc.pid
            load = CloudLoad(target, rest, utterances, args.request_timeout_s)
            asyncio.run(_cloud_levels(load, args, pids, report))
        finally:
            if cloud is not None:
                cloud.stop()
    return report


async def _cloud_levels(
    load: CloudLoad, args: argparse.Namespace, pids: Mapping[str, int], report: dict[str, Any]
) -> None:
    report["levels"] = []
    for interface in args.interfaces:
        for streams in args.streams:
            level = await cloud_level(load, interface, streams, args.seconds, pids, args.sample_s)
            report["levels"].append(level.to_json())
            print(f"cloud {interface} N={streams}: {level.ok} ok, {level.refused} refused, "
                  f"p50/p95 {_fmt(level.latency_ms['p50'])}/{_fmt(level.latency_ms['p95'])} ms",
                  file=sys.stderr, flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.target == "edge" and not args.streams and args.soak <= 0:
        sys.exit("nothing to do: give --streams levels and/or --soak MINUTES")
    if args.target == "edge":
        report = run_edge(args, argv)
        sections = [edge_section(report)] if report["levels"] else []
        if "soak" in report:
            soak = report["soak"]
            base = args.benchmarks_md.parent if args.benchmarks_md else Path.cwd()
            csv = os.path.relpath(soak["csv"], base)
            png = os.path.relpath(soak["png"], base) if soak["png"] else None
            sections.append(soak_section(report, png, csv))
    else:
        report = run_cloud(args, argv)
        sections = [cloud_section(report)]
    for section in sections:
        print(section + "\n")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
        print(f"report: {args.out}")
    if args.benchmarks_md:
        from speech_bench.markdown import replace_section

        for section in sections:
            begin, end = section.splitlines()[0], section.splitlines()[-1]
            replace_section(args.benchmarks_md, section, begin, end)
        print(f"markdown: {args.benchmarks_md}")


if __name__ == "__main__":
    main()
