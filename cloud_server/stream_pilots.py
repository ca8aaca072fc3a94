"""The pilots of one StreamingRecognize stream: started on the inference pool while it is idle, as
audio arrives; the latest result waits for the stream's final (see ``cloud_server/pilot.py``)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from cloud_server.audio import SAMPLE_RATE
from cloud_server.engine import RequestCancelledError
from cloud_server.pilot import LatestPilot, PilotSchedule
from cloud_server.pool import BackgroundJob
from cloud_server.results import PilotHypothesis, RecognizeOptions
from cloud_server.runtime import CloudRuntime

log = logging.getLogger(__name__)
_MAX_PILOT_SAMPLES = 30 * SAMPLE_RATE  # one decoding window: a longer utterance's final cannot use a pilot


class StreamPilots:
    """Created when a stream's config arrives; ``on_audio`` after each chunk, ``close`` at the end."""

    def __init__(self, runtime: CloudRuntime, options: RecognizeOptions, utterance_id: str) -> None:
        self._runtime = runtime
        self._options = options
        self._utterance_id = utterance_id or "-"
        interval = round(runtime.settings.pilot_interval_s * SAMPLE_RATE)
        self._schedule = PilotSchedule(interval, _MAX_PILOT_SAMPLES)
        self.latest = LatestPilot()
        self._job: BackgroundJob[PilotHypothesis] | None = None
        self._task: asyncio.Task[None] | None = None
        self._skipping = False

    def on_audio(self, pcm: bytes | bytearray) -> None:
        """``pcm``: all the stream's PCM16 audio so far. Starts a pilot when one is due and the pool
        is idle; never waits."""
        samples = len(pcm) // 2
        if not self._schedule.due(samples):
            return
        events = self._runtime.metrics.pilots
        audio = np.frombuffer(bytes(pcm[: 2 * samples]), dtype="<i2").astype(np.float32) / 32768.0
        job = self._runtime.start_pilot(audio, self._options, self.latest)
        if job is None:
            if not self._skipping:  # counted once per busy spell, not once per chunk
                events.labels("skipped").inc()
                self._skipping = True
            return
        self._skipping = False
        events.labels("started").inc()
        self._schedule.started(samples)
        self._job = job
        self._task = asyncio.create_task(self._follow(job), name=f"pilot-{self._utterance_id}")

    async def _follow(self, job: BackgroundJob[PilotHypothesis]) -> None:
        events = self._runtime.metrics.pilots
        try:
            pilot = await job.result()
        except asyncio.CancelledError:  # the stream ended first
            events.labels("cancelled").inc()
            raise
        except RequestCancelledError:  # a request needed the worker
            events.labels("cancelled").inc()
        except Exception:
            # A pilot is only a head start: the final decodes without it, so the stream goes on.
            log.exception("pilot of utterance %s failed", self._utterance_id)
            events.labels("failed").inc()
        else:
            events.labels("completed").inc()
            log.debug(
                "pilot of utterance %s: %.2f s of audio, %d tokens in %.2f s",
                self._utterance_id,
                pilot.samples / SAMPLE_RATE,
                len(pilot.tokens),
                pilot.processing_seconds,
                extra={"utterance_id": self._utterance_id},
            )
        finally:
            self._schedule.finished()

    def close(self) -> None:
        """The stream is over: a pilot still queued or running stops at its next check."""
        if self._job is not None:
            self._job.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
