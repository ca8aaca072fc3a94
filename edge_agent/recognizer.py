"""The shared, long-lived parts of the edge agent: model, VAD, confidence policy, worker, cloud link.

Loaded once per process (STYLE 1); sessions keep all per-client state and only borrow these.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from edge_agent.asr.interface import AsrModel
from edge_agent.asr.registry import load_model
from edge_agent.audio.vad import SileroVad, VadModel
from edge_agent.confidence import Calibration
from edge_agent.language import ENGLISH, LanguagePolicy, language_policy
from edge_agent.metrics import EdgeMetrics
from edge_agent.offload import OffloadTarget
from edge_agent.offramp import OfframpPolicy
from edge_agent.settings import EdgeSettings
from edge_agent.worker import InferenceWorker

if TYPE_CHECKING:
    from edge_agent.escalation.manager import Escalator
    from edge_agent.session import Session

log = logging.getLogger(__name__)


class Recognizer:
    def __init__(
        self, settings: EdgeSettings, model: AsrModel | None = None, vad: VadModel | None = None
    ) -> None:
        started = time.perf_counter()
        self.settings = settings
        self.model: AsrModel = model or load_model(settings)
        self.vad: VadModel = vad or SileroVad()
        self.calibration = Calibration.for_model(self.model.name, settings.calibration_path)
        self.policy = OfframpPolicy.from_calibration(
            self.calibration, settings.escalation_threshold, settings.target_offload_rate
        )
        self.offload: OffloadTarget | None = None
        """With a target offload rate, the threshold that holds it on the recent traffic."""
        if settings.target_offload_rate is not None:
            self.offload = OffloadTarget(settings.target_offload_rate, self.policy.threshold)
        self.language: LanguagePolicy | None = language_policy(self.model.name, settings.languages)
        """The language offramp (None: off, every utterance is taken as English)."""
        if settings.cloud_target and not settings.other_languages_to_cloud and self.cloud_detects_language:
            # Escalated audio of any language would reach the cloud: the promise cannot be kept.
            raise ValueError(
                f"EDGE_OTHER_LANGUAGES_TO_CLOUD=false needs an edge model that can tell other languages "
                f"(the bundled Moonshine); {self.model.name} has no language offramp, so the audio it "
                "escalates could be in any language. Use the bundled Moonshine, run without a cloud, or "
                "set EDGE_LANGUAGES=en to send every escalation to the cloud as English."
            )
        self.escalator: Escalator | None = None
        self.sessions: dict[str, Session] = {}
        self.metrics = EdgeMetrics(self._queue_depth, lambda: float(len(self.sessions)))
        self.metrics.escalation_threshold.set(self.policy.threshold)
        self.worker = InferenceWorker(
            lambda kind, seconds: self.metrics.inference_seconds.labels(kind).inc(seconds)
        )
        log.info(
            "edge model %s ready in %.2f s; escalation threshold %.3f (early %.3f, stop %.3f)",
            self.model.name,
            time.perf_counter() - started,
            self.policy.threshold,
            self.policy.early_threshold,
            self.policy.stop_threshold,
        )

    @property
    def cloud_detects_language(self) -> bool:
        """Every escalation asks the cloud to detect the language: other languages are allowed, but this
        edge model has no language offramp to judge them itself (the bundled conformer, a user's model)."""
        return self.language is None and tuple(self.settings.languages) != (ENGLISH,)

    def _queue_depth(self) -> float:
        return float(self.escalator.queue_depth) if self.escalator is not None else 0.0

    async def start(self) -> None:
        self.worker.start()
        if self.escalator is not None:
            await self.escalator.start()

    async def stop(self) -> None:
        if self.escalator is not None:
            await self.escalator.stop()
        await self.worker.stop()
