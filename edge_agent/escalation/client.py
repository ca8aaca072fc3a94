"""The edge's gRPC client for the cloud recognizer (grpc.aio).

Every failure surfaces as one exception, ``CloudUnavailable``, because the edge reacts to all of them
the same way: it keeps its own result (and maybe queues the utterance for later). No call ever waits
past its deadline, and a circuit breaker stops the edge from hammering a cloud that is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from pydantic import SecretStr

from asr_common.protos import speech_pb2, speech_pb2_grpc
from edge_agent.escalation.breaker import BreakerState, CircuitBreaker

if TYPE_CHECKING:
    from asr_common.protos.speech_pb2_grpc import CloudRecognizerAsyncStub

log = logging.getLogger(__name__)

_SERVICE = "speech.v1.CloudRecognizer"
SAMPLE_RATE_HZ = 16000
# Worth retrying later (the same request may well succeed); the rest will fail the same way again.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
# The cloud is down, overloaded or broken: these open the breaker. Other codes (INVALID_ARGUMENT,
# UNAUTHENTICATED, ...) mean the cloud is up and judged our request, so they count as a success for
# the breaker; CANCELLED says nothing either way.
_CLOUD_FAULTS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _channel_options() -> list[tuple[str, str | int]]:
    service_config = {
        # Spread calls over every address the target resolves to (dns:///name:port, ipv4:a,b); the
        # default pick_first would send everything to one backend.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                # Only unary Recognize is retried by gRPC itself, and only on UNAVAILABLE (the request
                # never reached a server, or the server could not take it). The call's deadline bounds
                # all attempts together. Streams are not retried: their audio was already consumed.
                "name": [{"service": _SERVICE, "method": "Recognize"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    return [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1),
        # Detect a dead connection (NAT timeout, cloud host gone) during a long stream. No pings on
        # idle connections: the server's default policy answers frequent idle pings with GOAWAY.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # Reconnect soon after the cloud comes back: the default backoff grows to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


def _status_lost(exc: grpc.aio.AioRpcError) -> bool:
    return (
        exc.code() == grpc.StatusCode.INTERNAL
        and exc.details() == "Internal error from Core"
        and "execute_batch" in (exc.debug_error_string() or "")
    )


class CloudUnavailable(Exception):
    """The cloud did not answer usefully. ``retryable``: the same request may succeed later."""

    def __init__(self, reason: str, retryable: bool, code: grpc.StatusCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.code = code
        """The gRPC status; None only when the breaker refused the call (nothing was sent)."""


@dataclass(frozen=True)
class CloudWord:
    word: str
    start: float
    """Seconds from the start of the utterance audio."""
    end: float
    probability: float


@dataclass(frozen=True)
class CloudHypothesis:
    text: str
    confidence: float
    """0..1, see ``speech_pb2.Hypothesis.confidence``."""
    avg_logprob: float
    no_speech_prob: float
    words: tuple[CloudWord, ...]


@dataclass(frozen=True)
class CloudResult:
    """The cloud's answer for one utterance, best hypothesis first."""

    hypotheses: tuple[CloudHypothesis, ...]
    language: str
    model: str
    processing_s: float
    """Server-side compute time."""
    latency_s: float
    """Measured by the edge: for ``recognize`` the whole call; for a stream, ``finish()`` to the answer."""
    utterance_id: str = ""
    audio_s: float = 0.0

    @property
    def best(self) -> CloudHypothesis | None:
        return self.hypotheses[0] if self.hypotheses else None

    @classmethod
    def from_proto(cls, response: speech_pb2.RecognizeResponse, latency_s: float) -> CloudResult:
        return cls(
            hypotheses=tuple(
                CloudHypothesis(
                    text=h.text,
                    confidence=h.confidence,
                    avg_logprob=h.avg_logprob,
                    no_speech_prob=h.no_speech_prob,
                    words=tuple(CloudWord(w.word, w.start, w.end, w.probability) for w in h.words),
                )
                for h in response.hypotheses
            ),
            language=response.language,
            model=response.model,
            processing_s=response.processing_seconds,
            latency_s=latency_s,
            utterance_id=response.utterance_id,
            audio_s=response.audio_seconds,
        )


class CloudClient:
    """Calls the cloud recognizer. Create anywhere; use from one event loop (the channel is built
    lazily inside the loop that first uses it, and grpc.aio channels belong to one loop).

    ``api_key`` is sent as ``authorization: Bearer <key>`` metadata and never logged. The channel is
    plaintext: put TLS in front (or extend this class with channel credentials) before sending a key
    over an untrusted network.
    """

    def __init__(
        self,
        target: str,
        api_key: SecretStr | None,
        deadline_s: float,
        n_best: int,
        breaker: CircuitBreaker,
        *,
        stream_max_s: float = 300.0,
        credentials: grpc.ChannelCredentials | None = None,
        languages: Sequence[str] = (),
        detect_always: bool = False,
    ) -> None:
        """``languages``: the allow-list the cloud detects other-language speech among (empty: any).
        ``detect_always``: every request asks the cloud to detect the language, for an edge model that
        cannot judge it itself (no language offramp fitted on it)."""
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        if not target:
            raise ValueError("target must not be empty")
        self.target = target
        self.breaker = breaker
        self._api_key = api_key
        self._deadline_s = deadline_s
        self._n_best = n_best
        # The gRPC deadline of a whole stream (audio is sent while the user speaks, so it cannot be the
        # per-answer deadline); it stops a forgotten stream from holding a server slot forever.
        self._stream_max_s = stream_max_s
        self._credentials = credentials
        self._languages = list(languages)
        self._detect_always = detect_always
        self._channel: grpc.aio.Channel | None = None
        self._stub: CloudRecognizerAsyncStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def config(self, context: speech_pb2.EdgeContext | None = None) -> speech_pb2.RecognitionConfig:
        """English, the language of the edge models; for speech the edge judged another language
        (``context.other_language``, kept in queued escalations too), and for every request of an edge
        that cannot judge it (``detect_always``), no language: the cloud detects it among the allow-list."""
        other = self._detect_always or (context is not None and context.other_language)
        return speech_pb2.RecognitionConfig(
            language="" if other else "en",
            languages=self._languages if other else [],
            n_best=self._n_best,
            word_timestamps=True,
            sample_rate_hz=SAMPLE_RATE_HZ,
        )

    async def recognize(
        self, audio: bytes, context: speech_pb2.EdgeContext, deadline_s: float | None = None
    ) -> CloudResult:
        """Recognize one utterance (PCM16 mono 16 kHz) in one call. Raises ``CloudUnavailable``."""
        deadline = self._deadline_s if deadline_s is None else deadline_s
        stub = self._get_stub()
        self._admit()
        request = speech_pb2.RecognizeRequest(config=self.config(context), audio=audio, context=context)
        started = time.monotonic()
        try:
            response = await stub.Recognize(request, timeout=deadline, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc, context.utterance_id) from None
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return CloudResult.from_proto(response, time.monotonic() - started)

    def open_stream(self, context: speech_pb2.EdgeContext) -> CloudStream:
        """Start streaming an utterance before it ended (early escalation). Call inside the event loop.

        Raises ``CloudUnavailable`` at once when the breaker is open; other failures surface in
        ``CloudStream.finish()``."""
        stub = self._get_stub()
        self._admit()
        first = speech_pb2.StreamingRecognizeRequest(
            streaming_config=speech_pb2.StreamingConfig(config=self.config(context), context=context)
        )
        return CloudStream(self, stub, first, context.utterance_id)

    async def close(self) -> None:
        """Close the channel (cancels calls still running)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
            self._loop = None

    # -- internals shared with CloudStream -----------------------------------------------------------

    def _get_stub(self) -> CloudRecognizerAsyncStub:
        loop = asyncio.get_running_loop()
        if self._stub is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, options=_channel_options()
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=_channel_options())
            self._stub = speech_pb2_grpc.CloudRecognizerStub(self._channel)
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("CloudClient is bound to the event loop that first used it")
        return self._stub

    def _admit(self) -> None:
        if not self.breaker.allow():
            raise CloudUnavailable(
                f"circuit breaker open: retry in {self.breaker.retry_after():.1f} s", retryable=True
            )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._api_key is None:
            return ()
        return (("authorization", f"Bearer {self._api_key.get_secret_value()}"),)

    def _failed(self, exc: grpc.aio.AioRpcError, utterance_id: str) -> CloudUnavailable:
        """Record the outcome of a failed call in the breaker and translate it."""
        code = exc.code()
        if _status_lost(exc):
            # grpc.aio replaces the server's status with this INTERNAL error when the server ends a stream
            # while audio is still being written (grpc/grpc#36066): measured here for 25-80 % of streams
            # refused for a bad API key. The true cause is unknown, so it is neither a cloud failure nor
            # final: a unary retry of the same audio reports the real status.
            self.breaker.release()
            reason = "the cloud ended the stream while audio was being sent; its status was lost (grpc#36066)"
            log.debug("cloud call for utterance %s failed: %s", utterance_id or "-", reason)
            return CloudUnavailable(reason, retryable=True, code=code)
        if code in _CLOUD_FAULTS:
            self._record_fault()
        elif code == grpc.StatusCode.CANCELLED:
            self.breaker.release()
        else:
            self.breaker.record_success()
        reason = f"{code.name}: {exc.details() or 'no details'}"
        log.debug("cloud call for utterance %s failed: %s", utterance_id or "-", reason)
        return CloudUnavailable(reason, retryable=code in _RETRYABLE, code=code)

    def _record_fault(self) -> None:
        was_open = self.breaker.state is BreakerState.OPEN
        self.breaker.record_failure()
        if not was_open and self.breaker.state is BreakerState.OPEN:
            log.warning(
                "cloud %s failing: circuit breaker open for %.1f s", self.target, self.breaker.retry_after()
            )


class CloudStream:
    """One early-escalated utterance on a StreamingRecognize call.

    ``send_audio``/``update_context`` only enqueue (they never block); gRPC drains the queue into the
    call with flow control. Use from the event loop that opened the stream."""

    def __init__(
        self,
        client: CloudClient,
        stub: CloudRecognizerAsyncStub,
        first: speech_pb2.StreamingRecognizeRequest,
        utterance_id: str,
    ) -> None:
        self._client = client
        self._utterance_id = utterance_id
        self._pending: asyncio.Queue[speech_pb2.StreamingRecognizeRequest | None] = asyncio.Queue()
        self._finished = False
        self._cancelled = False
        self._call = stub.StreamingRecognize(
            self._requests(first), timeout=client._stream_max_s, metadata=client._metadata()
        )

    async def _requests(
        self, first: speech_pb2.StreamingRecognizeRequest
    ) -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield first
        while (message := await self._pending.get()) is not None:
            yield message

    def send_audio(self, pcm: bytes) -> None:
        """Append PCM16 mono 16 kHz audio. A no-op after ``cancel()`` or once the call has failed."""
        self._enqueue(speech_pb2.StreamingRecognizeRequest(audio=pcm))

    def update_context(self, context: speech_pb2.EdgeContext) -> None:
        """Send newer edge hypotheses (e.g. the final edge decode after an early escalation)."""
        self._enqueue(speech_pb2.StreamingRecognizeRequest(context=context))

    def _enqueue(self, message: speech_pb2.StreamingRecognizeRequest) -> None:
        if self._finished:
            raise RuntimeError("the stream was already finished")
        # A failed call no longer reads its requests: do not pile up audio nobody will send.
        if not self._cancelled and not self._call.done():
            self._pending.put_nowait(message)

    async def finish(self, deadline_s: float | None = None) -> CloudResult:
        """Half-close and wait at most ``deadline_s`` (default: the client's) for the answer.

        Raises ``CloudUnavailable``; the stream is closed afterwards either way."""
        if self._finished:
            raise RuntimeError("finish() was already called")
        if self._cancelled:
            raise CloudUnavailable("the stream was cancelled", retryable=True, code=grpc.StatusCode.CANCELLED)
        self._finished = True
        deadline = self._client._deadline_s if deadline_s is None else deadline_s
        self._pending.put_nowait(None)
        breaker = self._client.breaker
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(self._read_answer(), timeout=deadline)
        except asyncio.TimeoutError:
            # The stream's own gRPC deadline is longer (it covers the whole utterance), so the
            # per-answer deadline is enforced here.
            self._call.cancel()
            self._client._record_fault()
            raise CloudUnavailable(
                f"no answer within {deadline:.2f} s", retryable=True, code=grpc.StatusCode.DEADLINE_EXCEEDED
            ) from None
        except grpc.aio.AioRpcError as exc:
            raise self._client._failed(exc, self._utterance_id) from None
        except asyncio.CancelledError:
            self._call.cancel()
            breaker.release()
            raise
        if response is None:
            breaker.record_success()  # the cloud answered, though not as the protocol says
            raise CloudUnavailable("the cloud closed the stream without a result", retryable=False)
        breaker.record_success()
        return CloudResult.from_proto(response, time.monotonic() - started)

    async def _read_answer(self) -> speech_pb2.RecognizeResponse | None:
        answer = None
        # Read to the end of the stream so a failing status after the message still raises.
        async for message in self._call:
            if answer is None:
                answer = message.result
        return answer

    def cancel(self) -> None:
        """Abandon the stream (the edge decided it does not need the cloud). Idempotent."""
        if self._finished or self._cancelled:
            return
        self._cancelled = True
        self._pending.put_nowait(None)
        self._call.cancel()
        self._client.breaker.release()
