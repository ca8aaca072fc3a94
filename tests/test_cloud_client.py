"""The edge's cloud client and retry worker against real cloud servers (Whisper tiny.en) on loopback.

pytest-asyncio is not installed: each test runs its coroutine with ``asyncio.run`` (a fresh loop per
test, which is also what a grpc.aio channel needs: it belongs to the loop that created it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from pydantic import SecretStr

from asr_common.protos import speech_pb2
from edge_agent.escalation.breaker import BreakerState, CircuitBreaker
from edge_agent.escalation.client import CloudClient, CloudResult, CloudUnavailable
from edge_agent.escalation.queue import EscalationQueue, QueuedEscalation
from edge_agent.escalation.retry import RetryWorker, backoff_delay
from speech_bench.services import free_port
from tests.servers import ThreadedCloud, cloud_settings
from tests.speech import Clip, normalize, wer

T = TypeVar("T")
CHUNK = 3200  # 100 ms of PCM16 at 16 kHz


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _context(utterance_id: str, **fields: Any) -> speech_pb2.EdgeContext:
    base: dict[str, Any] = {
        "n_best": [speech_pb2.EdgeHypothesis(text="edge guess", confidence=0.3, log_prob=-4.0)],
        "confidence": 0.3,
        "reason": speech_pb2.LOW_CONFIDENCE,
    }
    return speech_pb2.EdgeContext(utterance_id=utterance_id, **(base | fields))


class BlackHole:
    """A TCP server that accepts connections and never sends a byte."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture(scope="module")
def tiny_cloud(model_cache: str) -> Iterator[ThreadedCloud]:
    server = ThreadedCloud(cloud_settings(model_cache, model="tiny.en")).start()
    yield server
    server.stop()


@pytest.fixture()
def read_clips(real_clips: list[Clip]) -> list[Clip]:
    return [c for c in real_clips if c.kind == "read"]


def _client(target: str, breaker: CircuitBreaker | None = None, **kwargs: Any) -> CloudClient:
    return CloudClient(
        target,
        kwargs.pop("api_key", None),
        kwargs.pop("deadline_s", 30.0),
        kwargs.pop("n_best", 3),
        breaker or CircuitBreaker(3, 10.0),
        **kwargs,
    )


def _check_words(result: CloudResult, duration: float) -> None:
    for hyp in result.hypotheses:
        assert hyp.words
        assert normalize(" ".join(w.word for w in hyp.words)) == normalize(hyp.text)
        assert all(0.0 <= w.start <= w.end <= duration + 0.05 for w in hyp.words)
        assert all(0.0 <= w.probability <= 1.0 for w in hyp.words)


# -- against the real server -------------------------------------------------------------------------


@pytest.mark.model
def test_recognize_real_clips(tiny_cloud: ThreadedCloud, read_clips: list[Clip]) -> None:
    async def scenario() -> list[CloudResult]:
        client = _client(tiny_cloud.grpc_target)
        try:
            return [await client.recognize(c.pcm16(), _context(f"utt-{i}")) for i, c in enumerate(read_clips)]
        finally:
            await client.close()

    results = run(scenario())
    assert wer([c.text for c in read_clips], [r.hypotheses[0].text for r in results]) < 0.2
    for i, (clip, result) in enumerate(zip(read_clips, results, strict=True)):
        assert result.utterance_id == f"utt-{i}"
        assert result.model == "tiny.en"
        assert result.language == "en"
        assert result.audio_s == pytest.approx(clip.duration, abs=0.01)
        assert 1 <= len(result.hypotheses) <= 3
        assert len({h.text for h in result.hypotheses}) == len(result.hypotheses)
        assert all(0.0 < h.confidence <= 1.0 for h in result.hypotheses)
        # Measured on the edge around the whole call, so it includes the server's compute time.
        assert result.processing_s > 0
        assert result.latency_s >= result.processing_s
        _check_words(result, clip.duration)


@pytest.mark.model
def test_streaming_in_100ms_chunks_with_context_updates(
    tiny_cloud: ThreadedCloud, read_clips: list[Clip]
) -> None:
    clip = max(read_clips, key=lambda c: c.duration)
    pcm = clip.pcm16()

    async def scenario() -> CloudResult:
        breaker = CircuitBreaker(1, 10.0)
        client = _client(tiny_cloud.grpc_target, breaker)
        try:
            stream = client.open_stream(_context("early-1", reason=speech_pb2.EARLY_PILOT))
            for i in range(0, len(pcm), CHUNK):
                stream.send_audio(pcm[i : i + CHUNK])
                if i == 10 * CHUNK:
                    stream.update_context(_context("early-1", is_final=False, reason_detail="pilot 2"))
                await asyncio.sleep(0.001)  # audio arrives over time, as from a microphone
            stream.update_context(_context("early-1", is_final=True, confidence=0.2))
            result = await stream.finish(deadline_s=20)
            with pytest.raises(RuntimeError):
                stream.send_audio(b"\x00\x00")
            assert breaker.state is BreakerState.CLOSED
            return result
        finally:
            await client.close()

    result = run(scenario())
    assert result.utterance_id == "early-1"
    assert result.audio_s == pytest.approx(clip.duration, abs=0.01)  # every chunk arrived, in order
    assert wer([clip.text], [result.hypotheses[0].text]) < 0.2
    assert 0 < result.latency_s < 20
    _check_words(result, clip.duration)


@pytest.mark.model
def test_cancelled_stream_frees_the_breaker_trial(tiny_cloud: ThreadedCloud, read_clips: list[Clip]) -> None:
    now = [0.0]
    breaker = CircuitBreaker(1, 5.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0  # half-open: exactly one trial may go

    async def scenario() -> None:
        client = _client(tiny_cloud.grpc_target, breaker)
        try:
            stream = client.open_stream(_context("cancel-me"))
            stream.send_audio(read_clips[0].pcm16()[: 10 * CHUNK])
            with pytest.raises(CloudUnavailable, match="circuit breaker open"):
                client.open_stream(_context("second"))  # the trial slot is taken
            stream.cancel()
            stream.cancel()
            stream.send_audio(b"\x00\x00")  # a no-op once cancelled
            with pytest.raises(CloudUnavailable) as info:
                await stream.finish()
            assert info.value.code == grpc.StatusCode.CANCELLED
            assert breaker.state is BreakerState.HALF_OPEN
            # The next call is the trial; it succeeds and closes the breaker.
            result = await client.recognize(read_clips[1].pcm16(), _context("trial"))
            assert result.hypotheses
            assert breaker.state is BreakerState.CLOSED
        finally:
            await client.close()

    run(scenario())


@pytest.mark.model
def test_invalid_argument_is_final_and_not_a_cloud_failure(tiny_cloud: ThreadedCloud) -> None:
    breaker = CircuitBreaker(1, 60.0)

    async def scenario() -> None:
        client = _client(tiny_cloud.grpc_target, breaker)
        try:
            for audio in (b"\x00\x01\x02", b""):
                with pytest.raises(CloudUnavailable) as info:
                    await client.recognize(audio, _context("bad"))
                assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
                assert not info.value.retryable
                assert "INVALID_ARGUMENT" in info.value.reason
            assert breaker.state is BreakerState.CLOSED  # the cloud is fine: our request was not
        finally:
            await client.close()

    run(scenario())


@pytest.mark.model
def test_round_robin_spreads_calls_over_backends(
    tiny_cloud: ThreadedCloud, model_cache: str, real_clips: list[Clip]
) -> None:
    second = ThreadedCloud(cloud_settings(model_cache, model="tiny.en")).start()
    dead = free_port()
    clip = next(c for c in real_clips if c.kind == "cards")
    labels = {"interface": "grpc", "route": "Recognize", "status": "OK"}

    def served(cloud: ThreadedCloud) -> float:
        return cloud.runtime.metrics.registry.get_sample_value("cloud_requests_total", labels) or 0.0

    async def scenario() -> None:
        # Two live backends and a dead one: calls go to both live ones and never fail.
        ports = (tiny_cloud.server.grpc_port, second.server.grpc_port, dead)
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        client = _client(target, CircuitBreaker(1, 60.0))
        try:
            # Round robin only picks connected backends: let every live one finish its handshake first.
            await client.recognize(clip.pcm16(), _context("rr-warm-up"))
            await asyncio.sleep(1.0)
            counted.extend([served(tiny_cloud), served(second)])
            for i in range(6):
                result = await client.recognize(clip.pcm16(), _context(f"rr-{i}"))
                assert wer([clip.text], [result.hypotheses[0].text]) < 0.5
        finally:
            await client.close()

    counted: list[float] = []
    try:
        run(scenario())
        counts = served(tiny_cloud) - counted[0], served(second) - counted[1]
    finally:
        second.stop()
    assert sum(counts) == 6
    assert min(counts) >= 2, counts


@pytest.mark.model
def test_api_key(model_cache: str, real_clips: list[Clip], caplog: pytest.LogCaptureFixture) -> None:
    key = "edge-s3cret-key-value"
    cloud = ThreadedCloud(cloud_settings(model_cache, model="tiny.en", api_key=key)).start()
    clip = real_clips[0]

    async def scenario() -> None:
        good = _client(cloud.grpc_target, api_key=SecretStr(key))
        breaker = CircuitBreaker(1, 60.0)
        missing = _client(cloud.grpc_target, breaker)
        wrong = _client(cloud.grpc_target, breaker, api_key=SecretStr("not-the-key"))
        try:
            result = await good.recognize(clip.pcm16(), _context("with-key"))
            assert wer([clip.text], [result.hypotheses[0].text]) < 0.2
            stream = good.open_stream(_context("stream-with-key"))
            stream.send_audio(clip.pcm16())
            assert (await stream.finish()).hypotheses
            for client in (missing, wrong):
                with pytest.raises(CloudUnavailable) as info:
                    await client.recognize(clip.pcm16(), _context("no-key"))
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert not info.value.retryable
                codes = set()
                for _ in range(10):
                    stream = client.open_stream(_context("stream-no-key"))
                    for i in range(0, 20 * CHUNK, CHUNK):
                        stream.send_audio(clip.pcm16()[i : i + CHUNK])
                    with pytest.raises(CloudUnavailable) as info:
                        await stream.finish()
                    codes.add(info.value.code)
                    if info.value.code == grpc.StatusCode.UNAUTHENTICATED:
                        assert not info.value.retryable
                    else:
                        # The server refused the stream while audio was still going out: grpc.aio loses
                        # the status (grpc/grpc#36066). Retryable, so a unary retry can find out.
                        assert info.value.code == grpc.StatusCode.INTERNAL
                        assert info.value.retryable and "grpc#36066" in info.value.reason
                    assert breaker.allow()  # neither outcome holds or trips the breaker
                    breaker.release()
                assert codes <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL}
            assert breaker.state is BreakerState.CLOSED  # a refused key is not an outage
        finally:
            for client in (good, missing, wrong):
                await client.close()

    try:
        with caplog.at_level(logging.DEBUG):
            run(scenario())
    finally:
        cloud.stop()
    assert "UNAUTHENTICATED" in caplog.text  # the failures were logged (at debug) ...
    assert key not in caplog.text  # ... without the key
    assert "not-the-key" not in caplog.text


# -- failures, no model needed --------------------------------------------------------------------------


def test_deadline_on_a_black_holed_server() -> None:
    hole = BlackHole()
    breaker = CircuitBreaker(5, 60.0)

    async def scenario() -> None:
        client = _client(f"127.0.0.1:{hole.port}", breaker, deadline_s=1.0)
        try:
            for deadline, call in (
                (1.0, lambda: client.recognize(b"\x00\x00" * 16000, _context("hole"))),
                (0.4, lambda: client.recognize(b"\x00\x00" * 16000, _context("hole"), deadline_s=0.4)),
            ):
                started = time.monotonic()
                with pytest.raises(CloudUnavailable) as info:
                    await call()
                elapsed = time.monotonic() - started
                assert deadline - 0.05 <= elapsed <= deadline + 0.5
                assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
                assert info.value.retryable
            stream = client.open_stream(_context("hole-stream"))
            stream.send_audio(b"\x00\x00" * 16000)
            started = time.monotonic()
            with pytest.raises(CloudUnavailable) as info:
                await stream.finish(deadline_s=0.5)
            assert time.monotonic() - started <= 1.0
            assert info.value.retryable
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert breaker.consecutive_failures == 3
        finally:
            await client.close()

    try:
        run(scenario(), timeout=20)
        assert hole.accepted, "the client did reach the black hole"
    finally:
        hole.close()


def test_breaker_opens_on_a_closed_port_then_refuses_without_network() -> None:
    port = free_port()
    now = [0.0]
    breaker = CircuitBreaker(2, 30.0, clock=lambda: now[0])

    async def scenario() -> None:
        client = _client(f"127.0.0.1:{port}", breaker, deadline_s=5.0)
        try:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(CloudUnavailable) as info:
                    await client.recognize(b"\x00\x00" * 1600, _context("down"))
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
                assert info.value.retryable
                assert time.monotonic() - started < 3.0  # refused connections fail fast, not at the deadline
            assert breaker.state is BreakerState.OPEN
        finally:
            await client.close()

        # The cloud "comes back" as a black hole on the same port; a fresh client shares the open breaker.
        hole = BlackHole(port)
        client = _client(f"127.0.0.1:{port}", breaker, deadline_s=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(CloudUnavailable, match="circuit breaker open") as info:
                await client.recognize(b"\x00\x00" * 1600, _context("refused"))
            assert time.monotonic() - started < 0.3  # refused before the 0.3 s deadline could pass
            assert not hole.accepted  # without a connection: nothing reached the network
            assert info.value.code is None and info.value.retryable
            with pytest.raises(CloudUnavailable, match="circuit breaker open"):
                client.open_stream(_context("refused-stream"))
            await asyncio.sleep(0.3)
            assert not hole.accepted, "an open breaker must not touch the network"
            now[0] = 30.0  # half-open: one trial goes out, fails, and re-opens the breaker
            with pytest.raises(CloudUnavailable) as info:
                await client.recognize(b"\x00\x00" * 1600, _context("trial"))
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert hole.accepted
            assert breaker.state is BreakerState.OPEN
        finally:
            await client.close()
            hole.close()

    run(scenario(), timeout=30)


# -- the retry worker -----------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    for attempts, base in ((0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (10_000, 60.0)):
        delays = [backoff_delay(attempts, 1.0, 60.0, rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base / 4  # really jittered


@pytest.mark.model
def test_retry_worker_delivers_once_the_cloud_comes_up(
    model_cache: str, read_clips: list[Clip], tmp_path: Path
) -> None:
    port = free_port()
    clip = read_clips[0]

    async def scenario() -> tuple[QueuedEscalation, CloudResult, int]:
        queue = EscalationQueue(tmp_path / "q.sqlite3", max_items=100, max_age_s=3600)
        client = _client(f"127.0.0.1:{port}", CircuitBreaker(3, 0.5), deadline_s=1.0)
        delivered: asyncio.Queue[tuple[QueuedEscalation, CloudResult]] = asyncio.Queue()

        async def on_result(item: QueuedEscalation, result: CloudResult) -> None:
            await delivered.put((item, result))

        worker = RetryWorker(queue, client, on_result, initial_s=0.1, max_s=0.4, deadline_s=20.0)
        worker.start()
        cloud: ThreadedCloud | None = None
        try:
            context = _context("queued-1").SerializeToString()
            await asyncio.to_thread(queue.put, "queued-1", "session-1", clip.pcm16(), context)
            worker.wake()
            # The cloud is down: the item is tried and rescheduled, never lost.
            deadline = time.monotonic() + 10
            while True:
                waiting = await asyncio.to_thread(queue.next_due, float("inf"))
                assert waiting is not None
                if waiting.attempts >= 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert waiting.attempts >= 2
            assert delivered.empty()
            # Now the cloud starts on exactly that port.
            settings = cloud_settings(model_cache, model="tiny.en", grpc_port=port)
            cloud = await asyncio.to_thread(lambda: ThreadedCloud(settings).start())
            item, result = await asyncio.wait_for(delivered.get(), 30)
            return item, result, await asyncio.to_thread(len, queue)
        finally:
            await worker.stop()
            await client.close()
            queue.close()
            if cloud is not None:
                await asyncio.to_thread(cloud.stop)

    item, result, left = run(scenario(), timeout=90)
    assert (item.utterance_id, item.session_id) == ("queued-1", "session-1")
    assert item.attempts >= 2
    assert result.utterance_id == "queued-1"
    assert wer([clip.text], [result.hypotheses[0].text]) < 0.2
    assert left == 0  # answered items (and their audio) are deleted


@pytest.mark.model
def test_retry_worker_drops_rejected_items_and_survives_callback_errors(
    tiny_cloud: ThreadedCloud, read_clips: list[Clip], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[str], int]:
        queue = EscalationQueue(tmp_path / "q.sqlite3", max_items=100, max_age_s=3600)
        client = _client(tiny_cloud.grpc_target)
        seen: list[str] = []
        done = asyncio.Event()

        async def on_result(item: QueuedEscalation, result: CloudResult) -> None:
            seen.append(item.utterance_id)
            if item.utterance_id == "good-1":
                raise RuntimeError("the session of good-1 is gone")
            done.set()

        queue.put("corrupt", "s", read_clips[0].pcm16(), b"\xff\xff\xff")  # e.g. a torn write
        for utt, audio in (
            ("bad", b"\x01\x02\x03"),
            ("good-1", read_clips[2].pcm16()),
            ("good-2", read_clips[3].pcm16()),
        ):
            queue.put(utt, "s", audio, _context(utt).SerializeToString())
        worker = RetryWorker(queue, client, on_result, initial_s=0.1, max_s=0.4)
        worker.start()  # items left from "before the restart" are sent without a wake()
        try:
            await asyncio.wait_for(done.wait(), 30)
            assert worker.running
            return seen, len(queue)
        finally:
            await worker.stop()
            await client.close()
            queue.close()

    with caplog.at_level(logging.WARNING, logger="edge_agent.escalation"):
        seen, left = run(scenario())
    assert seen == ["good-1", "good-2"]
    assert left == 0
    assert "dropping queued escalation" in caplog.text and "INVALID_ARGUMENT" in caplog.text
    assert "(utterance corrupt): bad context" in caplog.text
    assert "on_result failed" in caplog.text and "the session of good-1 is gone" in caplog.text
