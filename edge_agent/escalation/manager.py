"""The edge's link to the cloud: escalate now if the cloud answers in time, else queue and correct later.

The edge never waits past the deadline: on any failure the caller gets ``None`` at once and keeps its
own result; retryable failures put the utterance's audio in the durable queue, and when the cloud
answers later the session (if its client is still connected) sends a ``correction`` event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc

from asr_common.protos import speech_pb2
from edge_agent.escalation.breaker import CircuitBreaker
from edge_agent.escalation.client import CloudClient, CloudResult, CloudStream, CloudUnavailable
from edge_agent.escalation.queue import EscalationQueue, QueuedEscalation
from edge_agent.escalation.retry import RetryWorker
from edge_agent.settings import EdgeSettings

if TYPE_CHECKING:
    from edge_agent.recognizer import Recognizer

log = logging.getLogger(__name__)


class Escalator:
    def __init__(self, settings: EdgeSettings, rec: Recognizer) -> None:
        assert settings.cloud_target
        self._rec = rec
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self.client = CloudClient(
            settings.cloud_target,
            settings.cloud_api_key,
            settings.cloud_deadline_s,
            settings.cloud_n_best,
            self.breaker,
            credentials=channel_credentials(settings),
            languages=settings.languages,
            detect_always=rec.cloud_detects_language,
        )
        self.queue = EscalationQueue(settings.queue_path, settings.queue_max_items, settings.queue_max_age_s)
        self.retry = RetryWorker(
            self.queue,
            self.client,
            self._on_result,
            settings.retry_initial_s,
            settings.retry_max_s,
            deadline_s=settings.retry_deadline_s,
        )

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    def status(self) -> str:
        return self.breaker.state.value

    async def start(self) -> None:
        self.retry.start()

    async def stop(self) -> None:
        await self.retry.stop()
        await self.client.close()
        self.queue.close()

    async def recognize(
        self, session_id: str, context: speech_pb2.EdgeContext, pcm: bytes, deadline_s: float
    ) -> CloudResult | None:
        try:
            return await self.client.recognize(pcm, context, deadline_s)
        except CloudUnavailable as exc:
            await self._failed(exc, session_id, context, pcm)
            return None

    async def try_recognize(
        self, context: speech_pb2.EdgeContext, pcm: bytes, deadline_s: float
    ) -> CloudResult:
        """One attempt and nothing queued (a speculative escalation, for audio that may still grow).
        Raises ``CloudUnavailable``; the caller falls back to ``recognize``, which queues."""
        try:
            return await self.client.recognize(pcm, context, deadline_s)
        except CloudUnavailable as exc:
            self._rec.metrics.cloud_errors.labels(_kind(exc)).inc()
            raise

    def open_early(self, session_id: str, context: speech_pb2.EdgeContext) -> CloudStream | None:
        """Start streaming an utterance to the cloud before it ends; None when the breaker is open."""
        try:
            return self.client.open_stream(context)
        except CloudUnavailable as exc:
            self._rec.metrics.cloud_errors.labels(_kind(exc)).inc()
            return None

    async def finish_early(
        self,
        stream: CloudStream,
        session_id: str,
        context: speech_pb2.EdgeContext,
        pcm: bytes,
        deadline_s: float,
    ) -> CloudResult | None:
        try:
            stream.update_context(context)
            return await stream.finish(deadline_s)
        except CloudUnavailable as exc:
            await self._failed(exc, session_id, context, pcm)
            return None

    async def _failed(
        self, exc: CloudUnavailable, session_id: str, context: speech_pb2.EdgeContext, pcm: bytes
    ) -> None:
        self._rec.metrics.cloud_errors.labels(_kind(exc)).inc()
        if not exc.retryable:
            log.warning(
                "cloud refused utterance %s for good: %s", context.utterance_id, exc,
                extra={"utterance_id": context.utterance_id},
            )  # fmt: skip
            return
        queued = speech_pb2.EdgeContext()
        queued.CopyFrom(context)
        queued.reason = speech_pb2.RETRY
        # put() waits for the disk (the audio must survive a crash): off the event loop.
        await asyncio.to_thread(
            self.queue.put, context.utterance_id, session_id, pcm, queued.SerializeToString()
        )
        self.retry.wake()
        log.info(
            "cloud unavailable for %s (%s); queued for retry", context.utterance_id, exc,
            extra={"utterance_id": context.utterance_id},
        )  # fmt: skip

    async def _on_result(self, item: QueuedEscalation, result: CloudResult) -> None:
        session = self._rec.sessions.get(item.session_id)
        if session is None:
            log.info("late cloud answer for %s: its client has gone", item.utterance_id)
            return
        self._rec.metrics.corrections.inc()
        session.on_correction(item.utterance_id, result)


def channel_credentials(settings: EdgeSettings) -> grpc.ChannelCredentials | None:
    """TLS (and mutual TLS) credentials for the cloud channel, or None for plaintext."""
    tls = (
        settings.cloud_tls
        or settings.cloud_ca_file is not None
        or settings.cloud_client_cert_file is not None
    )
    if not tls:
        return None
    if (settings.cloud_client_cert_file is None) != (settings.cloud_client_key_file is None):
        raise ValueError("mutual TLS needs both EDGE_CLOUD_CLIENT_CERT_FILE and EDGE_CLOUD_CLIENT_KEY_FILE")
    root = settings.cloud_ca_file.read_bytes() if settings.cloud_ca_file else None
    cert = settings.cloud_client_cert_file.read_bytes() if settings.cloud_client_cert_file else None
    key = settings.cloud_client_key_file.read_bytes() if settings.cloud_client_key_file else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


def _kind(exc: CloudUnavailable) -> str:
    return exc.code.name.lower() if exc.code is not None else "unavailable"


def build_escalator(settings: EdgeSettings, rec: Recognizer) -> Escalator | None:
    """None when no cloud is configured (edge-only mode)."""
    return Escalator(settings, rec) if settings.cloud_target else None
