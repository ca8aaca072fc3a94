"""The ``speech.v1.CloudRecognizer`` gRPC service, health and reflection, on grpc.aio."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from asr_common.protos import speech_pb2, speech_pb2_grpc
from cloud_server.audio import InvalidAudioError, check_duration, pcm16_to_float
from cloud_server.auth import bearer_ok
from cloud_server.engine import EdgeCandidate, RequestCancelledError
from cloud_server.hotword_filter import relevant_hotwords
from cloud_server.pilot import LatestPilot
from cloud_server.pool import OverloadedError
from cloud_server.replay import AnswerCache, utterance_key
from cloud_server.results import Recognition, RecognizeOptions
from cloud_server.runtime import CloudRuntime, ModelNotReadyError
from cloud_server.settings import CloudSettings
from cloud_server.stream_pilots import StreamPilots

log = logging.getLogger(__name__)
SERVICE_NAME = speech_pb2.DESCRIPTOR.services_by_name["CloudRecognizer"].full_name
# Hotwords of one request (the config's and the edge context's): the edge sends up to 100 of a session's
# own and 100 defaults of at most 50 characters; Whisper's prompt holds ~220 tokens of them anyway.
MAX_HOTWORDS = 200
MAX_HOTWORD_CHARS = 100
MAX_LANGUAGES = 100  # Whisper knows 99 (100 with Cantonese)
# The edge's ``reason_detail`` when its offramp stopped the final decode midway (edge_agent.offramp).
_DECODE_STOPPED = "decode_stopped"
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]


def to_proto(result: Recognition, utterance_id: str) -> speech_pb2.RecognizeResponse:
    return speech_pb2.RecognizeResponse(
        utterance_id=utterance_id,
        hypotheses=[
            speech_pb2.Hypothesis(
                text=h.text,
                confidence=h.confidence,
                avg_logprob=h.avg_logprob,
                no_speech_prob=h.no_speech_prob,
                words=[
                    speech_pb2.Word(word=w.word, start=w.start, end=w.end, probability=w.probability)
                    for w in h.words
                ],
            )
            for h in result.hypotheses
        ],
        language=result.language,
        language_probability=result.language_probability,
        model=result.model,
        processing_seconds=result.processing_seconds,
        audio_seconds=result.audio_seconds,
        pilot_tokens=result.pilot_tokens,
    )


class CloudRecognizerService(speech_pb2_grpc.CloudRecognizerServicer):
    def __init__(self, runtime: CloudRuntime) -> None:
        self._runtime = runtime
        self._answers = AnswerCache(runtime.settings.replay_items, runtime.settings.replay_ttl_s)

    def _options(
        self, config: speech_pb2.RecognitionConfig, edge_context: speech_pb2.EdgeContext | None = None
    ) -> RecognizeOptions:
        """The request's options; hotwords are the config's, then the edge context's (with the relevance
        filter on, only those the edge's final hypotheses spell closely: ``relevant_to_edge``)."""
        s = self._runtime.settings
        if config.n_best > s.max_n_best:
            raise InvalidAudioError(f"n_best {config.n_best} is above the limit of {s.max_n_best}")
        if config.beam_size > 16:
            raise InvalidAudioError(f"beam_size {config.beam_size} is above the limit of 16")
        # Checked here, as REST checks it: an unknown code otherwise reached the tokenizer on the worker,
        # whose ValueError came back as UNKNOWN (found by tests/test_fuzz_cloud.py).
        languages = self._runtime.languages
        if config.language and languages and config.language not in languages:
            raise InvalidAudioError(f"unsupported language {config.language[:40]!r}")
        hotwords = _hotwords(config.hotwords, edge_context.hotwords if edge_context is not None else ())
        if hotwords and edge_context is not None:
            hotwords = relevant_to_edge(hotwords, edge_context, s)
        allowed = tuple(dict.fromkeys(config.languages))
        if len(allowed) > MAX_LANGUAGES:
            raise InvalidAudioError(f"{len(allowed)} languages; at most {MAX_LANGUAGES}")
        unknown = [code for code in allowed if languages and code not in languages]
        if unknown and len(languages) > 1:
            raise InvalidAudioError(f"unsupported language {unknown[0][:40]!r} in languages")
        if unknown:
            # An English-only model (``tiny.en``) transcribes the languages of the list it knows: English,
            # which the edge always lists. Only a list with none of them is refused.
            allowed = tuple(code for code in allowed if code in languages)
            if not allowed:
                known = ", ".join(languages)
                raise InvalidAudioError(f"none of the languages is one the model knows ({known})")
        return RecognizeOptions(
            # A request that lists languages asks for detection among them, whatever CLOUD_LANGUAGE says.
            language=config.language or (None if allowed else s.language),
            beam_size=config.beam_size or s.beam_size,
            n_best=config.n_best or 1,
            word_timestamps=config.word_timestamps,
            prompt=config.prompt or None,
            hotwords=hotwords,
            languages=allowed,
        )

    async def _run(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        config: speech_pb2.RecognitionConfig,
        audio_bytes: bytes,
        edge_context: speech_pb2.EdgeContext,
        pilot: LatestPilot | None = None,
    ) -> speech_pb2.RecognizeResponse:
        counter = self._runtime.metrics.requests
        utterance_id = edge_context.utterance_id
        key = utterance_key(edge_context, config, audio_bytes)
        replayed = self._answers.get(key)
        if replayed is not None:
            counter.labels("grpc", method, "REPLAYED").inc()
            log.info(
                "replayed utterance=%s (answered before)", utterance_id, extra={"utterance_id": utterance_id}
            )
            return replayed
        # The edge's hypotheses join the cloud's in the second pass (when the settings turn it on).
        edge = [EdgeCandidate(h.text, h.log_prob) for h in edge_context.n_best]
        try:
            options = self._options(config, edge_context)
            audio = pcm16_to_float(audio_bytes, config.sample_rate_hz, self._runtime.settings.max_audio_s)
            result = await self._runtime.recognize(audio, options, edge, pilot)
        except InvalidAudioError as exc:
            counter.labels("grpc", method, "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OverloadedError as exc:
            counter.labels("grpc", method, "RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), (("retry-after", str(exc.retry_after_s)),)
            )
        except ModelNotReadyError as exc:
            counter.labels("grpc", method, "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except RequestCancelledError:
            counter.labels("grpc", method, "CANCELLED").inc()
            await context.abort(grpc.StatusCode.CANCELLED, "request cancelled")
        counter.labels("grpc", method, "OK").inc()
        log.info(
            "recognized utterance=%s audio=%.2fs in %.2fs hyps=%d pilot_tokens=%d pilot_audio=%.2fs",
            utterance_id or "-",
            result.audio_seconds,
            result.processing_seconds,
            len(result.hypotheses),
            result.pilot_tokens,
            result.pilot_audio_seconds,
            extra={
                "utterance_id": utterance_id,
                "method": method,
                "audio_s": round(result.audio_seconds, 3),
                "pilot_tokens": result.pilot_tokens,
                "pilot_audio_s": round(result.pilot_audio_seconds, 3),
            },
        )
        response = to_proto(result, utterance_id)
        self._answers.put(key, response)
        return response

    async def Recognize(
        self, request: speech_pb2.RecognizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> speech_pb2.RecognizeResponse:
        return await self._run(context, "Recognize", request.config, request.audio, request.context)

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[speech_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[speech_pb2.StreamingRecognizeResponse]:
        config: speech_pb2.RecognitionConfig | None = None
        edge_context = speech_pb2.EdgeContext()
        pcm = bytearray()
        max_bytes = int(self._runtime.settings.max_audio_s * 16000 * 2)
        pilots: StreamPilots | None = None
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("request")
                if config is None and kind != "streaming_config":
                    await self._invalid(context, "the first message must carry streaming_config")
                if kind == "streaming_config":
                    if config is not None:
                        await self._invalid(context, "streaming_config may only be sent once, first")
                    config = message.streaming_config.config
                    edge_context = message.streaming_config.context
                    if config.sample_rate_hz not in (0, 16000):
                        await self._invalid(
                            context,
                            f"unsupported sample_rate_hz {config.sample_rate_hz}: send 16000 Hz PCM16 mono",
                        )
                    pilots = self._pilots(config, edge_context)
                elif kind == "audio":
                    if len(pcm) + len(message.audio) > max_bytes:
                        try:
                            check_duration(
                                (len(pcm) + len(message.audio)) / 32000, self._runtime.settings.max_audio_s
                            )
                        except InvalidAudioError as exc:
                            await self._invalid(context, str(exc))
                    pcm.extend(message.audio)
                    if pilots is not None:
                        pilots.on_audio(pcm)
                elif kind == "context":
                    edge_context = message.context
            if config is None:
                await self._invalid(context, "empty stream: send streaming_config, then audio")
                return
            latest = pilots.latest if pilots is not None else None
            response = await self._run(
                context, "StreamingRecognize", config, bytes(pcm), edge_context, latest
            )
            yield speech_pb2.StreamingRecognizeResponse(result=response)
        finally:
            if pilots is not None:
                pilots.close()

    def _pilots(
        self, config: speech_pb2.RecognitionConfig, edge_context: speech_pb2.EdgeContext
    ) -> StreamPilots | None:
        """The stream's pilots, when the settings want them and the config is valid (an invalid one
        is reported when the stream ends, as without pilots)."""
        if not self._runtime.settings.pilot:
            return None
        try:
            options = self._options(config, edge_context)
        except InvalidAudioError:
            return None
        return StreamPilots(self._runtime, options, edge_context.utterance_id)

    async def _invalid(self, context: grpc.aio.ServicerContext[Any, Any], message: str) -> None:
        self._runtime.metrics.requests.labels("grpc", "StreamingRecognize", "INVALID_ARGUMENT").inc()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def relevant_to_edge(
    hotwords: tuple[str, ...], edge_context: speech_pb2.EdgeContext, settings: CloudSettings
) -> tuple[str, ...]:
    """The hotwords worth Whisper's prompt: with ``hotword_filter`` on and the edge's hypotheses of the
    whole utterance at hand (a final context), those some hypothesis spells closely. The rest keep the
    whole list: a context sent before the end of speech (an early escalation) or after the offramp
    stopped the final decode holds a hypothesis of part of the audio only; speech the edge judged not
    English gets English-sounding guesses from it; a request without hypotheses has nothing to judge by."""
    texts = [h.text for h in edge_context.n_best]
    partial = not edge_context.is_final or edge_context.reason_detail == _DECODE_STOPPED
    if not settings.hotword_filter or partial or edge_context.other_language or not texts:
        return hotwords
    kept = relevant_hotwords(hotwords, texts, settings.hotword_filter_threshold)
    log.debug(
        "hotword filter keeps %d of %d phrases",
        len(kept),
        len(hotwords),
        extra={"utterance_id": edge_context.utterance_id},
    )
    return kept


def _hotwords(*lists: Sequence[str]) -> tuple[str, ...]:
    """The request's hotword lists as one (repeats dropped, order kept), within the documented bounds."""
    phrases = tuple(dict.fromkeys(" ".join(p.split()) for phrases in lists for p in phrases))
    phrases = tuple(p for p in phrases if p)
    if len(phrases) > MAX_HOTWORDS:
        raise InvalidAudioError(f"{len(phrases)} hotwords; at most {MAX_HOTWORDS}")
    for phrase in phrases:
        if len(phrase) > MAX_HOTWORD_CHARS:
            raise InvalidAudioError(
                f"a hotword is longer than {MAX_HOTWORD_CHARS} characters: {phrase[:40]!r}..."
            )
    return phrases


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <key>`` (health and reflection stay open)."""

    def __init__(self, runtime: CloudRuntime) -> None:
        self._runtime = runtime

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")

        async def deny_stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")

        self._deny_unary: _Handler = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream: _Handler = grpc.stream_stream_rpc_method_handler(deny_stream)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        key = self._runtime.settings.api_key
        if key is None or method.startswith(_OPEN_METHODS):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization")
        if bearer_ok(header if isinstance(header, str) else None, key):
            return await continuation(handler_call_details)
        name = method.rsplit("/", 1)[-1]
        self._runtime.metrics.requests.labels("grpc", name, "UNAUTHENTICATED").inc()
        return self._deny_stream if name == "StreamingRecognize" else self._deny_unary


class _Malformed:
    """Stands in for a request whose bytes did not parse as the method's message."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for a CloudRecognizer request whose bytes are not its protobuf message.

    grpc.aio parses a request before the handler runs and answers a DecodeError with UNKNOWN
    ("Unexpected <class DecodeError>"), which reads as a server bug (found by tests/test_fuzz_cloud.py).
    Here the parse cannot fail: a malformed request reaches the handler wrapper, which aborts."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        parse = handler.request_deserializer
        if parse is None:
            return handler

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as exc:
                return _Malformed(f"the request is not a valid protobuf message: {exc}")

        async def check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)

        unary, stream = handler.unary_unary, handler.stream_stream
        if unary is not None:

            async def checked_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await check(request, context)
                return await unary(request, context)  # type: ignore[arg-type]

            return grpc.unary_unary_rpc_method_handler(checked_unary, tolerant, handler.response_serializer)
        if stream is not None:

            async def checked_requests(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for request in requests:
                    await check(request, context)
                    yield request

            async def checked_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for response in stream(checked_requests(requests, context), context):  # type: ignore[arg-type, attr-defined]
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                checked_stream, tolerant, handler.response_serializer
            )
        return handler


def max_message_bytes(runtime: CloudRuntime) -> int:
    """Room for the longest accepted utterance in one Recognize message."""
    return int(runtime.settings.max_audio_s * 16000 * 2) + (1 << 20)


def create_grpc_server(
    runtime: CloudRuntime, address: str
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build (not start) the gRPC server bound to ``address``; returns it, its port and its health servicer.

    Health reports NOT_SERVING until the caller marks the model loaded."""
    limit = max_message_bytes(runtime)
    server = grpc.aio.server(
        interceptors=[ApiKeyInterceptor(runtime), MalformedRequestInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 16 << 20),
            # Close connections now and then so clients re-resolve DNS and reach replicas added by scaling.
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ],
    )
    speech_pb2_grpc.add_CloudRecognizerServicer_to_server(CloudRecognizerService(runtime), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    credentials = server_credentials(runtime.settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC to {address}")
    return server, port, health_servicer


def server_credentials(settings: CloudSettings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured; with a client CA, client certs are required."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        if settings.tls_client_ca_file is not None:
            raise ValueError("CLOUD_TLS_CLIENT_CA_FILE needs CLOUD_TLS_CERT_FILE and CLOUD_TLS_KEY_FILE")
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("TLS needs both CLOUD_TLS_CERT_FILE and CLOUD_TLS_KEY_FILE")
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)
