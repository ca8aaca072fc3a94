"""The JSON events the edge sends to WebSocket clients (see README: WebSocket protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.language import ENGLISH, UNDETERMINED
from edge_agent.offramp import choose

if TYPE_CHECKING:
    from edge_agent.escalation.client import CloudResult


def ready(session_id: str, sample_rate: int, encoding: str) -> dict[str, Any]:
    return {"type": "ready", "session_id": session_id, "sample_rate": sample_rate, "encoding": encoding}


def partial(utterance_id: str, text: str, start: float, audio_end: float) -> dict[str, Any]:
    return {"type": "partial", "utterance_id": utterance_id, "text": text, "start": start, "end": audio_end}


def speech_started(utterance_id: str, start: float) -> dict[str, Any]:
    """The VAD heard speech begin (only for sessions that ask for VAD events); ``start`` in seconds."""
    return {"type": "speech_started", "utterance_id": utterance_id, "start": round(start, 3)}


def speech_stopped(utterance_id: str, end: float, reason: str) -> dict[str, Any]:
    """The utterance ended (silence, length cap, commit or stream end); its final follows."""
    return {"type": "speech_stopped", "utterance_id": utterance_id, "end": round(end, 3), "reason": reason}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def end(utterances: int) -> dict[str, Any]:
    return {"type": "end", "utterances": utterances}


def words_with_times(words: list[tuple[str, float]], start: float, end: float) -> list[dict[str, Any]]:
    """Edge words with times spread over the utterance in proportion to their length.

    The edge model gives no alignment, so these times are estimates (``"word_timing": "estimated"`` on
    the final event); cloud results carry the cloud's aligned word times."""
    if not words:
        return []
    weights = [len(w) + 1 for w, _ in words]
    total = sum(weights)
    out = []
    t = start
    for (word, confidence), weight in zip(words, weights, strict=True):
        duration = (end - start) * weight / total
        out.append(
            {"word": word, "start": round(t, 3), "end": round(t + duration, 3), "confidence": confidence}
        )
        t += duration
    return out


@dataclass(frozen=True)
class UtteranceSpan:
    utterance_id: str
    start: float
    """Seconds on the session's audio timeline."""
    end: float
    end_reason: str
    """Why the utterance ended: the endpointer's reason (silence, max length, stream end)."""
    pilots: int
    """Pilots published for it."""
    endpoint: str | None = None
    """Adaptive endpointing's verdict on the pause that ended it (complete, incomplete, default); None
    when a fixed silence, the length cap or the stream's end ended it."""


@dataclass(frozen=True)
class EdgeVerdict:
    text: str
    p_wrong: float
    words: Sequence[tuple[str, float]]
    """(word, confidence) from the edge model."""
    reused_tokens: int
    usable: bool = True
    """False when the speech was judged not English: the English-only model's text is no transcript."""


@dataclass(frozen=True)
class CloudVerdict:
    result: CloudResult | None
    p_wrong: float | None
    """None when the cloud gave no hypothesis (not asked, failed, or still pending)."""
    pending: bool
    """Escalated, but the cloud did not answer in time: queued, a ``correction`` may follow."""

    @property
    def text(self) -> str | None:
        best = self.result.best if self.result is not None else None
        return best.text if best is not None else None


NO_CLOUD = CloudVerdict(None, None, False)


def final(
    span: UtteranceSpan,
    edge: EdgeVerdict,
    cloud: CloudVerdict,
    source: str,
    reason: str | None,
    latency_s: float,
    finalize_s: float,
    escalated: bool | None = None,
) -> dict[str, Any]:
    """The ``final`` event: the chosen result (``source``), with both sides' confidences and texts.

    ``reason`` is the escalation reason (None: not escalated); ``escalated`` defaults to whether there is
    one (``reason`` ``language`` without escalation: other-language speech kept on the device). Latencies
    in seconds. ``language`` is the cloud's for a cloud result and English for the edge's; an edge result
    judged not English is not transcribed: empty text, ``"transcribed": false``, language ``und``."""
    best = cloud.result.best if cloud.result is not None else None
    transcribed = True
    language = ENGLISH
    if source == "cloud" and best is not None:
        assert cloud.result is not None
        language = cloud.result.language or ENGLISH
        text = best.text
        confidence = 1.0 - (cloud.p_wrong if cloud.p_wrong is not None else 0.5)
        words = [
            {
                "word": w.word,
                "start": round(span.start + w.start, 3),
                "end": round(span.start + w.end, 3),
                "confidence": round(w.probability, 4),
            }
            for w in best.words
        ]
        timing = "aligned"
    elif not edge.usable:
        # Never English gibberish for speech in another language: say it was not transcribed.
        text, confidence, words, timing = "", 0.0, [], "estimated"
        transcribed, language = False, UNDETERMINED
    else:
        text = edge.text
        confidence = 1.0 - edge.p_wrong
        words = words_with_times(list(edge.words), span.start, span.end)
        timing = "estimated"
    return {
        "type": "final",
        "utterance_id": span.utterance_id,
        "text": text,
        "confidence": round(confidence, 4),
        "source": source,
        "transcribed": transcribed,
        "language": language,
        "escalated": reason is not None if escalated is None else escalated,
        "reason": reason,
        "edge_confidence": round(1.0 - edge.p_wrong, 4),
        "cloud_confidence": round(1.0 - cloud.p_wrong, 4) if cloud.p_wrong is not None else None,
        "edge_text": edge.text,
        "cloud_text": cloud.text,
        "cloud_pending": cloud.pending,
        "words": words,
        "word_timing": timing,
        "start": round(span.start, 3),
        "end": round(span.end, 3),
        "end_reason": span.end_reason,
        "endpoint": span.endpoint,
        "latency_ms": round(1000 * latency_s, 1),
        "finalize_ms": round(1000 * finalize_s, 1),
        "pilots": span.pilots,
        "reused_tokens": edge.reused_tokens,
    }


def correction(
    utterance_id: str,
    edge_text: str,
    p_edge: float | None,
    cloud_text: str,
    p_cloud: float,
    language: str = ENGLISH,
    p_cloud_better: float | None = None,
) -> dict[str, Any]:
    """A late cloud answer for an utterance whose final already went out; keeps the likelier result.

    ``p_edge`` None: the edge had no usable text (speech judged not English); ``language``: the cloud's;
    ``p_cloud_better``: the calibration's ``pick`` model, as ``offramp.choose`` takes it."""
    source = choose(p_edge, p_cloud, language, p_cloud_better)
    chosen = p_cloud if source == "cloud" or p_edge is None else p_edge
    return {
        "type": "correction",
        "utterance_id": utterance_id,
        "text": cloud_text if source == "cloud" else edge_text,
        "source": source,
        "language": (language or ENGLISH) if source == "cloud" else ENGLISH,
        "confidence": round(1.0 - chosen, 4),
        "edge_confidence": round(1.0 - p_edge, 4) if p_edge is not None else None,
        "cloud_confidence": round(1.0 - p_cloud, 4),
        "cloud_text": cloud_text,
    }
