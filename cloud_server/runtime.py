"""What both interfaces share: the settings, the model, the inference pool and the metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from cloud_server.audio import SAMPLE_RATE
from cloud_server.engine import EdgeCandidate, SecondPassWeights, WhisperEngine
from cloud_server.metrics import CloudMetrics
from cloud_server.model_store import ModelLocation, resolve_model
from cloud_server.pilot import LatestPilot
from cloud_server.pool import BackgroundJob, InferencePool
from cloud_server.results import (
    PilotHypothesis,
    Recognition,
    RecognizeOptions,
    TranscribeOptions,
    Transcript,
)
from cloud_server.settings import CloudSettings

log = logging.getLogger(__name__)


class ModelNotReadyError(RuntimeError):
    """The model is still loading."""


class CloudRuntime:
    """Created once per server process; handlers get it injected."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.metrics = CloudMetrics(lambda: float(self.pool.pending))
        self.pool = InferencePool(
            settings.workers,
            settings.max_queue,
            settings.retry_after_s,
            on_cancelled=lambda stage: self.metrics.cancelled.labels(stage).inc(),
        )
        self.location: ModelLocation | None = None
        self._engine: WhisperEngine | None = None
        # Read at construction so a missing or malformed weights file stops the server at start.
        self.second_pass: SecondPassWeights | None = (
            SecondPassWeights.load(settings.second_pass_weights) if settings.second_pass else None
        )

    @property
    def ready(self) -> bool:
        return self._engine is not None

    @property
    def languages(self) -> tuple[str, ...]:
        """Language codes the loaded model knows (empty before it loads)."""
        return self._engine.languages if self._engine else ()

    @property
    def model_name(self) -> str:
        return self.location.name if self.location else self.settings.model

    def resolve(self) -> ModelLocation:
        """Find the model files (assembling the bundled base once). Raises ModelNotAvailableError."""
        if self.location is None:
            self.location = resolve_model(self.settings.model, self.settings.model_cache_dir)
        return self.location

    def load(self) -> WhisperEngine:
        """Blocking: resolve and load the model."""
        location = self.resolve()
        started = time.perf_counter()
        engine = WhisperEngine(
            location,
            compute_type=self.settings.compute_type,
            cpu_threads=self.settings.cpu_threads,
            workers=self.settings.workers,
            hotword_prompt_tokens=self.settings.hotword_prompt_tokens,
        )
        log.info(
            "model %s loaded from %s in %.2f s", location.name, location.path, time.perf_counter() - started
        )
        return engine

    async def start(self) -> None:
        """Load the model off the event loop; ``ready`` turns true when done."""
        engine = await asyncio.to_thread(self.load)
        weights = self.second_pass
        if weights is not None and weights.model not in (None, engine.name):
            log.warning(
                "the second pass's weights were fitted with model %s, not %s", weights.model, engine.name
            )
        self._engine = engine
        self.metrics.model_loaded.set(1)

    def _require(self) -> WhisperEngine:
        if self._engine is None:
            raise ModelNotReadyError("the model is still loading")
        return self._engine

    async def recognize(
        self,
        audio: np.ndarray,
        options: RecognizeOptions,
        edge: Sequence[EdgeCandidate] = (),
        pilot: LatestPilot | None = None,
    ) -> Recognition:
        """The cloud's n-best; with the edge's hypotheses and the second pass on, the merged ranking.

        ``pilot`` holds the stream's pilots: the latest one is read when the decode starts on its
        worker, so a pilot that finished while the request waited is used."""
        engine = self._require()
        weights = self.second_pass

        def work(cancel: threading.Event) -> Recognition:
            latest = pilot.get() if pilot is not None else None
            if edge and weights is not None:
                return engine.recognize_with_edge(audio, options, edge, weights, cancel, latest)
            return engine.recognize(audio, options, cancel, latest)

        result = await self.pool.run(work)
        self._observe("recognize", result.processing_seconds, result.audio_seconds)
        if result.pilot_tokens:
            self.metrics.pilot_tokens.inc(result.pilot_tokens)
        return result

    def start_pilot(
        self, audio: np.ndarray, options: RecognizeOptions, latest: LatestPilot
    ) -> BackgroundJob[PilotHypothesis] | None:
        """Start a pilot on ``audio`` if the pool is idle (``None`` when busy or still loading); its
        result goes to ``latest`` from the worker thread, before any request queued behind it runs."""
        engine = self._engine
        if engine is None:
            return None

        def work(cancel: threading.Event) -> PilotHypothesis:
            result = engine.pilot(audio, options, cancel)
            latest.offer(result)
            self._observe("pilot", result.processing_seconds, result.samples / SAMPLE_RATE)
            return result

        return self.pool.try_background(work)

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        engine = self._require()
        long_s = self.settings.long_audio_s
        result = await self.pool.run(lambda cancel: engine.transcribe(audio, options, cancel, long_s))
        self._observe("transcribe", result.processing_seconds, result.duration)
        return result

    def _observe(self, operation: str, seconds: float, audio_seconds: float) -> None:
        self.metrics.inference_seconds.labels(operation).observe(seconds)
        self.metrics.audio_seconds.labels(operation).inc(audio_seconds)

    def close(self) -> None:
        self.pool.shutdown()
