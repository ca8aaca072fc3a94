"""``cloud-server``: serve REST and gRPC. Flags override ``CLOUD_*`` environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from pydantic import ValidationError

from asr_common.logs import configure as configure_logging
from cloud_server.model_store import ModelNotAvailableError
from cloud_server.service import CloudServer
from cloud_server.settings import CloudSettings

log = logging.getLogger("cloud_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud-server", description=__doc__)
    p.add_argument("--host", help="REST bind address (CLOUD_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="REST port (CLOUD_PORT, default 8080)")
    p.add_argument("--grpc-host", help="gRPC bind address (CLOUD_GRPC_HOST, default [::])")
    p.add_argument("--grpc-port", type=int, help="gRPC port (CLOUD_GRPC_PORT, default 50051)")
    p.add_argument("--model", help="base | tiny.en | path to a CTranslate2 Whisper directory (CLOUD_MODEL)")
    p.add_argument(
        "--model-cache-dir", help="where the bundled base model is assembled (CLOUD_MODEL_CACHE_DIR)"
    )
    p.add_argument(
        "--cpu-threads", type=int, help="threads per inference worker (CLOUD_CPU_THREADS, default 2)"
    )
    p.add_argument("--workers", type=int, help="parallel inference workers (CLOUD_WORKERS, default 1)")
    p.add_argument("--max-queue", type=int, help="requests admitted at once before 503 (CLOUD_MAX_QUEUE)")
    p.add_argument("--language", help="default language code (CLOUD_LANGUAGE; unset = detect)")
    p.add_argument("--log-format", choices=["text", "json"], help="text or json lines (CLOUD_LOG_FORMAT)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (CLOUD_LOG_LEVEL)")
    return p


def load_settings(argv: list[str] | None = None) -> CloudSettings:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return CloudSettings(**overrides)


async def serve(settings: CloudSettings) -> None:
    server = CloudServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1f s)", settings.grace_s)
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    # Models come from installed packages only; never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        sys.exit(f"cloud-server: invalid settings:\n{exc}")
    configure_logging(settings.log_level, settings.log_format, "cloud-server")
    try:
        asyncio.run(serve(settings))
    except ModelNotAvailableError as exc:
        sys.exit(f"cloud-server: {exc}")
    except OSError as exc:
        sys.exit(f"cloud-server: cannot start: {exc}")


if __name__ == "__main__":
    main()
