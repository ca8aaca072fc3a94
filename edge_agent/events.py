"""The JSON events the edge sends to WebSocket clients (see README: WebSocket protocol)."""

from __future__ import annotations

from typing import Any


def ready(session_id: str, sample_rate: int, encoding: str) -> dict[str, Any]:
    return {"type": "ready", "session_id": session_id, "sample_rate": sample_rate, "encoding": encoding}


def partial(utterance_id: str, text: str, start: float, audio_end: float) -> dict[str, Any]:
    return {"type": "partial", "utterance_id": utterance_id, "text": text, "start": start, "end": audio_end}


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
