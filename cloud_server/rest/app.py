"""The OpenAI-compatible REST API: an app factory whose lifespan owns (or borrows) the runtime."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import PurePath
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud_server import __version__
from cloud_server.audio import InvalidAudioError, decode_file
from cloud_server.auth import bearer_ok
from cloud_server.engine import RequestCancelledError
from cloud_server.pool import OverloadedError
from cloud_server.rest import formats
from cloud_server.rest.errors import ApiError, documented_errors, error_response, install_error_handlers
from cloud_server.results import TranscribeOptions
from cloud_server.runtime import CloudRuntime, ModelNotReadyError
from cloud_server.settings import CloudSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

AUDIO_EXTENSIONS = frozenset(
    {"flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "opus", "wav", "webm", "weba", "aac"}
)
_OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
_ALIASES = ("whisper-1",)
# FastAPI reads an empty form value as an absent one and would quietly use the default.
_NOT_EMPTY = ("model", "language", "response_format", "temperature", "timestamp_granularities[]")


def create_app(settings: CloudSettings | None = None, runtime: CloudRuntime | None = None) -> FastAPI:
    """Build the REST app. Without ``runtime`` the app loads the model itself in its lifespan
    (``uvicorn --factory cloud_server.rest.app:create_app``)."""
    settings = settings or (runtime.settings if runtime else CloudSettings())
    owns_runtime = runtime is None
    rt = runtime or CloudRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_runtime:
            rt.resolve()
            await rt.start()
        try:
            yield
        finally:
            if owns_runtime:
                rt.close()

    app = FastAPI(title="edge-cloud-asr cloud server", version=__version__, lifespan=lifespan)
    app.state.runtime = rt
    install_error_handlers(app)
    upload_limit = int(settings.max_upload_mb * 1024 * 1024)

    @app.middleware("http")
    async def count_and_authorize(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > upload_limit + (1 << 20):
            # Refuse before the body is read and spooled.
            response: Response = error_response(
                413,
                f"request is larger than the {settings.max_upload_mb:g} MiB upload limit",
                "file_too_large",
            )
        elif path not in _OPEN_PATHS and not bearer_ok(
            request.headers.get("authorization"), settings.api_key
        ):
            response = error_response(
                401, "missing or invalid API key (send Authorization: Bearer <key>)", "invalid_api_key"
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        rt.metrics.requests.labels("rest", label, str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "The model is still loading"}})
    async def ready() -> JSONResponse:
        """Readiness: the model is loaded."""
        if rt.ready:
            return JSONResponse({"status": "ready", "model": rt.model_name})
        return JSONResponse({"status": "loading", "model": rt.model_name}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=documented_errors(401))
    async def list_models() -> dict[str, Any]:
        created = int(time.time())
        ids = [rt.model_name, *_ALIASES]
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": created, "owned_by": "edge-cloud-asr"} for i in ids
            ],
        }

    # The schema lists the statuses and bodies this route sends, so clients (and schemathesis, in
    # tests/test_fuzz_cloud.py) can check answers against it: it listed only 200 and FastAPI's 422.
    @app.post(
        "/v1/audio/transcriptions",
        response_model=None,
        responses={
            200: {"content": {media: {"schema": {"type": "string"}} for media in ("text/plain", "text/vtt")}},
            **documented_errors(400, 401, 413, 415, 499, 503),
        },
    )
    async def transcriptions(
        request: Request,
        file: Annotated[UploadFile, File(description="Audio file: wav, flac, mp3, ogg, m4a, webm, ...")],
        model: Annotated[str, Form()] = "whisper-1",
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
        timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    ) -> Response | dict[str, Any]:
        form = await request.form()  # already parsed for the parameters: this is FastAPI's copy
        for name in _NOT_EMPTY:
            if "" in form.getlist(name):
                raise ApiError(
                    400, f"{name} is empty; leave it out for the default", "invalid_value", param=name
                )
        _check_model(model, rt)
        if response_format not in formats.RESPONSE_FORMATS:
            raise ApiError(
                400,
                f"response_format must be one of {', '.join(formats.RESPONSE_FORMATS)}",
                "invalid_value",
                param="response_format",
            )
        granularities = set(timestamp_granularities or ["segment"])
        if not granularities <= {"word", "segment"}:
            raise ApiError(400, "timestamp_granularities[] takes 'word' and/or 'segment'", "invalid_value")
        if timestamp_granularities and response_format != "verbose_json":
            raise ApiError(
                400,
                "timestamp_granularities[] requires response_format=verbose_json",
                "invalid_value",
                param="timestamp_granularities[]",
            )
        # Before the model loads the list is empty; transcribe() refuses with 503 then anyway.
        if language and rt.languages and language not in rt.languages:
            raise ApiError(400, f"unsupported language {language!r}", "invalid_value", param="language")
        _check_type(file)
        data = await _read_limited(file, upload_limit)
        try:
            # Decoding takes a while on long files; the event loop keeps serving meanwhile.
            audio = await asyncio.to_thread(decode_file, data, settings.max_audio_s)
        except InvalidAudioError as exc:
            raise ApiError(400, str(exc), "invalid_audio", param="file") from exc
        options = TranscribeOptions(
            language=language or settings.language,
            beam_size=settings.beam_size,
            prompt=prompt or None,
            temperatures=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if temperature == 0 else (temperature,),
            word_timestamps="word" in granularities,
        )
        try:
            transcript = await _unless_disconnected(request, rt.transcribe(audio, options))
        except OverloadedError as exc:
            raise ApiError(
                503,
                str(exc),
                "server_busy",
                type_="server_error",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from exc
        except ModelNotReadyError as exc:
            raise ApiError(
                503, str(exc), "model_loading", type_="server_error", headers={"Retry-After": "5"}
            ) from exc
        except RequestCancelledError as exc:
            raise ApiError(499, "request cancelled", "cancelled") from exc
        if response_format == "text":
            return PlainTextResponse(transcript.text + "\n")
        if response_format == "srt":
            return PlainTextResponse(formats.to_srt(transcript))
        if response_format == "vtt":
            return PlainTextResponse(formats.to_vtt(transcript), media_type="text/vtt")
        if response_format == "verbose_json":
            return formats.to_verbose_json(
                transcript, segments="segment" in granularities, words="word" in granularities
            )
        return formats.to_json(transcript)

    return app


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client goes away first: then cancel it (the pool drops a queued job
    and stops a running one at its next check) and answer 499. Uvicorn does not cancel a handler whose
    client left, so without this a closed connection would still cost a full decode."""
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not job.done():
            job.cancel()
            # Let the pool handle the cancellation before the handler answers (or is itself cancelled).
            await asyncio.wait((job,))
    if job.cancelled():
        gone.result()  # a failure to watch the connection is an error (500, logged), not a false 499
        raise ApiError(499, "the client closed the connection", "cancelled")
    return job.result()


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects. The body has been read, so the server's next message is
    the disconnect; it comes when the connection closes (or when the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _check_model(model: str, rt: CloudRuntime) -> None:
    accepted = {rt.model_name, f"whisper-{rt.model_name}", rt.settings.model, *_ALIASES}
    if model not in accepted:
        raise ApiError(
            400,
            f"model {model!r} is not served here; use one of {', '.join(sorted(accepted))}",
            "model_not_found",
            param="model",
        )


def _check_type(file: UploadFile) -> None:
    suffix = PurePath(file.filename or "").suffix.lower().lstrip(".")
    if suffix and suffix not in AUDIO_EXTENSIONS:
        raise ApiError(
            415,
            f"unsupported file type '.{suffix}'; send one of: {', '.join(sorted(AUDIO_EXTENSIONS))}",
            "unsupported_media_type",
            param="file",
        )
    content_type = (file.content_type or "").split(";")[0].strip().lower()
    if content_type and not (
        content_type.startswith(("audio/", "video/"))
        or content_type in ("application/octet-stream", "application/ogg")
    ):
        raise ApiError(
            415,
            f"unsupported content type {content_type!r}; send an audio file",
            "unsupported_media_type",
            param="file",
        )


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(
            413, f"file is larger than the {limit / 1048576:g} MiB limit", "file_too_large", param="file"
        )
    if not data:
        raise ApiError(400, "the uploaded file is empty", "empty_file", param="file")
    return data
