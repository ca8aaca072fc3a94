"""``edge-agent --mic``: transcribe the default input device in-process, printing partials and finals."""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from edge_agent.escalation.manager import build_escalator
from edge_agent.recognizer import Recognizer
from edge_agent.session import Session
from edge_agent.settings import EdgeSettings
from edge_agent.stream_client import _show


async def run_mic(settings: EdgeSettings, rate: int = 16000) -> None:
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:  # OSError: the PortAudio library itself is missing
        sys.exit(
            f"edge-agent --mic needs sounddevice and PortAudio: pip install 'edge-cloud-asr[mic]' ({exc})"
        )
    rec = await asyncio.to_thread(Recognizer, settings)
    rec.escalator = build_escalator(settings, rec)
    await rec.start()
    session = Session(rec, rate, "f32le")
    rec.sessions[session.id] = session
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)

    def callback(data: np.ndarray, count: int, time_info: object, status: object) -> None:
        chunk = np.ascontiguousarray(data[:, 0], dtype="<f4").tobytes()
        loop.call_soon_threadsafe(frames.put_nowait, chunk)

    async def printer() -> None:
        while True:
            _show(await session.events.get(), sys.stdout)

    show = asyncio.create_task(printer())
    print("listening on the default input device; Ctrl-C to stop", file=sys.stderr)
    try:
        with sd.InputStream(
            samplerate=rate, channels=1, dtype="float32", blocksize=rate // 10, callback=callback
        ):
            while True:
                session.feed(await frames.get())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        await session.finish()
        show.cancel()
        await rec.stop()
