"""Autoregression offramps: when to escalate to the cloud, and which result to keep. Pure logic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from edge_agent.asr.interface import TokenInfo
from edge_agent.confidence import Calibration, edge_features
from edge_agent.language import is_english


class Reason(str, Enum):
    LOW_CONFIDENCE = "low_confidence"
    EARLY_PILOT = "early_pilot"
    DECODE_STOPPED = "decode_stopped"
    LONG_UTTERANCE = "long_utterance"
    FORCED = "forced"
    LANGUAGE = "language"
    """The speech is not English, which the edge models cannot transcribe (``edge_agent.language``)."""


@dataclass(frozen=True)
class Decision:
    escalate: bool
    p_wrong: float
    reason: Reason | None = None
    score: float | None = None
    """What the threshold was applied to (``Calibration.escalation_score``); None: ``p_wrong``."""
    features: dict[str, float] | None = None
    """The decode's features (the ``pick`` model reads them with the cloud's)."""


@dataclass(frozen=True)
class OfframpPolicy:
    """Thresholds on P(edge result wrong). ``threshold`` for finished decodes; ``early_threshold`` for
    pilots (escalate before end of speech); ``stop_threshold`` to abandon a final decode midway."""

    calibration: Calibration
    threshold: float
    early_threshold: float
    stop_threshold: float
    min_pilot_s: float = 1.0
    min_stop_tokens: int = 6

    @classmethod
    def from_calibration(
        cls,
        calibration: Calibration,
        threshold: float | None = None,
        target_offload_rate: float | None = None,
    ) -> OfframpPolicy:
        """Thresholds from the calibration file, or set directly, or derived from a target offload rate."""
        if target_offload_rate is not None:
            chosen = calibration.threshold_for_offload(target_offload_rate)
        elif threshold is not None:
            chosen = threshold
        else:
            chosen = calibration.threshold
        if calibration.route is not None:
            # The final threshold is on the route model's scale, the early and stop ones on the pilot
            # model's P(wrong): they keep their calibrated values.
            return cls(calibration, chosen, calibration.early_threshold, calibration.stop_threshold)
        # Early and stop thresholds keep their calibrated distance above the final threshold.
        early = min(0.99, chosen + (calibration.early_threshold - calibration.threshold))
        stop = min(0.995, chosen + (calibration.stop_threshold - calibration.threshold))
        return cls(calibration, chosen, max(chosen, early), max(chosen, stop))

    def at_pilot(
        self, tokens: Sequence[TokenInfo], audio_s: float, speech_ratio: float, agreement: float
    ) -> Decision:
        """After a pilot decode of the audio so far: escalate early if it already looks hard."""
        feats = edge_features(tokens, audio_s, speech_ratio, agreement, finished=True)
        p = self.calibration.pilot.probability(feats)
        if audio_s >= self.min_pilot_s and tokens and p > self.early_threshold:
            return Decision(True, p, Reason.EARLY_PILOT)
        return Decision(False, p)

    def should_stop(self, tokens: Sequence[TokenInfo], audio_s: float, speech_ratio: float) -> bool:
        """During the final decode: stop once the outcome is clearly an escalation."""
        if len(tokens) < self.min_stop_tokens:
            return False
        feats = edge_features(tokens, audio_s, speech_ratio, 1.0, finished=True)
        return self.calibration.pilot.probability(feats) > self.stop_threshold

    def at_final(
        self,
        tokens: Sequence[TokenInfo],
        audio_s: float,
        speech_ratio: float,
        agreement: float,
        finished: bool,
        threshold: float | None = None,
    ) -> Decision:
        """After the final decode; ``threshold`` replaces the policy's (a target offload's, which follows
        the recent traffic: ``edge_agent.offload``)."""
        feats = edge_features(tokens, audio_s, speech_ratio, agreement, finished)
        p = self.calibration.final.probability(feats)
        score = self.calibration.escalation_score(feats)
        limit = self.threshold if threshold is None else threshold
        return Decision(score > limit, p, Reason.LOW_CONFIDENCE if score > limit else None, score, feats)


@dataclass(frozen=True)
class EscalationPlan:
    escalate: bool
    reason: Reason | None
    p_edge: float
    """P(edge result wrong) used to choose between edge and cloud."""
    count_now: bool
    """Count this escalation now (an early one was counted when it began)."""
    detect_language: bool = False
    """The cloud is asked to detect the language (the speech was judged not English), not told English."""
    edge_usable: bool = True
    """False when the final decode was judged not English: the edge's English text is no transcript."""
    score: float = 0.0
    """The escalation score (``Decision.score``), which a target offload follows."""
    features: dict[str, float] | None = None
    """The final decode's features (None for a decode the offramp stopped)."""


@dataclass(frozen=True)
class LanguageState:
    """What the language offramp said about an utterance (``edge_agent.language``)."""

    other: bool = False
    """The final decode was judged not English."""
    early: bool = False
    """The utterance is already streaming to the cloud for detection (a pilot was judged not English)."""
    to_cloud: bool = True
    """Other-language speech may go to the cloud (``EDGE_OTHER_LANGUAGES_TO_CLOUD``)."""


ENGLISH_ONLY = LanguageState()


def plan_escalation(
    decision: Decision,
    stopped: bool,
    early: bool,
    always_cloud: bool,
    cloud_enabled: bool,
    language: LanguageState = ENGLISH_ONLY,
) -> EscalationPlan:
    """What to do with a finished edge decode: escalate or not, and why.

    ``stopped``: the offramp ended the decode midway; ``early``: the utterance is already streaming to the
    cloud (escalated from a pilot); ``cloud_enabled``: a cloud is configured at all. Speech judged not
    English escalates with reason ``language`` and asks the cloud to detect its language, unless it may
    not leave the device: then nothing is sent, not even a low-confidence or forced escalation."""
    reason: Reason | None = decision.reason
    if early:
        reason = Reason.LANGUAGE if language.early else Reason.EARLY_PILOT
    elif stopped:
        reason = Reason.DECODE_STOPPED
    if language.other:
        reason = Reason.LANGUAGE
    if always_cloud:
        reason = Reason.FORCED
    detect = language.other or language.early
    allowed = cloud_enabled and (language.to_cloud or not detect)
    escalate = allowed and (always_cloud or decision.escalate or stopped or early or detect)
    # A decode the offramp stopped holds only the start of the utterance: never prefer it.
    p_edge = 1.0 if stopped else decision.p_wrong
    score = 1.0 if stopped else decision.p_wrong if decision.score is None else decision.score
    # An early escalation was counted when it began; one that asked for English and gives way to a
    # request for detection is a new escalation, for language.
    replaced = early and detect and not language.early
    return EscalationPlan(
        escalate,
        reason if escalate else None,
        p_edge,
        escalate and (not early or replaced),
        detect_language=escalate and detect,
        edge_usable=not language.other,
        score=score,
        features=None if stopped else decision.features,
    )


def choose(
    edge_p_wrong: float | None,
    cloud_p_wrong: float | None,
    cloud_language: str = "en",
    p_cloud_better: float | None = None,
) -> str:
    """Keep the result more likely to be right; ties go to the edge (no extra latency or cost).

    ``edge_p_wrong`` None: the edge has no usable text (the speech was judged not English). A cloud answer
    in another language than English is always kept: the English-only edge's text of such speech is
    meaningless, and the two probabilities are not comparable. ``p_cloud_better`` (a calibration's
    ``pick`` model, which judges both texts at once) decides instead of the two P(wrong) when given."""
    if cloud_p_wrong is None:
        return "edge"
    if edge_p_wrong is None or not is_english(cloud_language):
        return "cloud"
    if p_cloud_better is not None:
        return "cloud" if p_cloud_better > 0.5 else "edge"
    return "cloud" if cloud_p_wrong < edge_p_wrong else "edge"
