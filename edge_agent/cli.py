"""``edge-agent``: serve (default), ``--mic``, ``stream FILE``, ``calibrate``, ``prepare``, ``quantize``.

Serving flags override ``EDGE_*`` environment variables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

from pydantic import ValidationError

from asr_common.logs import configure as configure_logging
from edge_agent.settings import EdgeSettings

log = logging.getLogger("edge_agent")


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge speech recognition with pilot inference and cloud escalation. "
        "Subcommands: stream FILE (stream a file to a running agent), calibrate (fit the confidence "
        "model), prepare (build the optimized model graphs), quantize OUT (a lower-bit copy of the model). "
        "Without one: serve.",
    )
    p.add_argument("--host", help="bind address (EDGE_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="WebSocket/HTTP port (EDGE_PORT, default 8765)")
    p.add_argument("--cloud-target", help="cloud gRPC host:port; '' for edge only (EDGE_CLOUD_TARGET)")
    p.add_argument(
        "--threads", dest="intra_op_threads", type=int, help="onnxruntime threads (EDGE_INTRA_OP_THREADS)"
    )
    p.add_argument(
        "--escalation-threshold", type=float, help="P(wrong) threshold (EDGE_ESCALATION_THRESHOLD)"
    )
    p.add_argument(
        "--target-offload-rate", type=float, help="derive the threshold (EDGE_TARGET_OFFLOAD_RATE)"
    )
    p.add_argument("--queue-path", help="escalation queue file (EDGE_QUEUE_PATH)")
    p.add_argument(
        "--no-pilot", dest="pilot", action="store_const", const=False, help="disable pilot inference"
    )
    p.add_argument("--no-offramps", dest="offramps", action="store_const", const=False,
                   help="decide on escalation only after the final decode (EDGE_OFFRAMPS)")  # fmt: skip
    p.add_argument(
        "--no-speculative",
        dest="speculative",
        action="store_const",
        const=False,
        help="decode only after the endpoint fires (EDGE_SPECULATIVE)",
    )
    p.add_argument(
        "--no-speculative-escalation",
        dest="speculative_escalation",
        action="store_const",
        const=False,
        help="ask the cloud only after the endpoint (EDGE_SPECULATIVE_ESCALATION)",
    )
    p.add_argument(
        "--adaptive-endpoint",
        dest="adaptive_endpoint",
        action="store_const",
        const=True,
        help="let the speculative final set the silence that ends an utterance (EDGE_ADAPTIVE_ENDPOINT)",
    )
    p.add_argument(
        "--always-cloud", action="store_const", const=True, help="send every utterance to the cloud"
    )
    p.add_argument("--mic", action="store_true", help="transcribe the default microphone instead of serving")
    p.add_argument("--log-format", choices=["text", "json"], help="text or json lines (EDGE_LOG_FORMAT)")
    p.add_argument("--log-level", help="DEBUG, INFO, ... (EDGE_LOG_LEVEL)")
    return p


def load_settings(argv: list[str]) -> tuple[EdgeSettings, bool]:
    args = _serve_parser().parse_args(argv)
    mic = bool(args.mic)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None and k != "mic"}
    return EdgeSettings(**overrides), mic


async def serve(settings: EdgeSettings) -> None:
    import uvicorn

    from edge_agent import systemd
    from edge_agent.server.app import create_app
    from edge_agent.server.serving import server_config

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn runs the lifespan (model load) and then binds: after this, clients can connect.
            await super().startup(sockets)
            if not self.should_exit:
                systemd.notify(f"READY=1\nSTATUS=serving on {settings.host}:{settings.port}")

    config = server_config(create_app(settings), settings)
    server = Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    interval = systemd.watchdog_interval()
    watchdog = asyncio.create_task(systemd.watchdog_loop(interval)) if interval else None
    try:
        await server.serve()
    finally:
        systemd.notify("STOPPING=1")
        if watchdog is not None:
            watchdog.cancel()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv and argv[0] == "stream":
        from edge_agent.stream_client import main as stream_main

        stream_main(argv[1:])
        return
    if argv and argv[0] == "calibrate":
        from edge_agent.calibrate import main as calibrate_main

        calibrate_main(argv[1:])
        return
    if argv and argv[0] == "quantize":
        from edge_agent.quantize import main as quantize_main

        quantize_main(argv[1:])
        return
    if argv and argv[0] == "prepare":
        from edge_agent.asr.registry import load_model

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        model = load_model(EdgeSettings())
        print(f"{model.name} ready")
        return
    try:
        settings, mic = load_settings(argv)
    except ValidationError as exc:
        sys.exit(f"edge-agent: invalid settings:\n{exc}")
    configure_logging(settings.log_level, settings.log_format, "edge-agent")
    if mic:
        from edge_agent.mic import run_mic

        asyncio.run(run_mic(settings))
        return
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
