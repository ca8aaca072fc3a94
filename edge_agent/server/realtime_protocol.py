"""The OpenAI Realtime API's transcription-session shapes, as pure functions (no network, no model).

``/v1/realtime`` (``edge_agent.server.realtime``) speaks this protocol over the same sessions as
``/v1/stream``. Here: the session configuration a ``session.update`` may set (validated, with the API's
error wording), the server events, G.711 decoding for ``audio/pcmu`` / ``audio/pcma``, and the
agreement rule that turns the edge's revisable pilots into the API's append-only text deltas.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

PCM_RATE = 24000
"""``audio/pcm`` is 16-bit mono little-endian at 24 kHz, the only rate the API defines for it."""
G711_RATE = 8000
FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
MAX_HOTWORDS = 100
MAX_HOTWORD_CHARS = 50
# ``prompt`` is free text; a list of phrases is its natural reading for a transcriber: split it here.
_PROMPT_SPLIT = re.compile(r"[,;\n]+")


class ConfigError(ValueError):
    """A ``session.update`` the agent cannot apply; ``param`` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TranscriptionConfig:
    """What a transcription session is set to; defaults are the API's."""

    format: str = "audio/pcm"
    turn_detection: bool = True
    semantic: bool = False
    """``semantic_vad`` asked: served by the agent's own VAD with adaptive endpointing when enabled."""
    silence_ms: int | None = None
    """``server_vad.silence_duration_ms``; None: the agent's ``EDGE_MIN_SILENCE_MS``."""
    model: str = "edge"
    language: str | None = None
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    include_logprobs: bool = False

    @property
    def rate(self) -> int:
        return PCM_RATE if self.format == "audio/pcm" else G711_RATE

    @property
    def hotwords(self) -> tuple[str, ...]:
        """``keywords`` and the phrases of ``prompt`` (split at commas, semicolons, newlines); a prompt's
        phrase longer than a hotword may be (a sentence of context, not a name) is left out."""
        phrases = list(self.keywords) + [" ".join(p.split()) for p in _PROMPT_SPLIT.split(self.prompt)]
        unique = dict.fromkeys(p for p in phrases if p and len(p) <= MAX_HOTWORD_CHARS)
        return tuple(unique)[:MAX_HOTWORDS]

    def session(self, default_silence_ms: int, threshold: float) -> dict[str, Any]:
        """The ``session`` object of ``session.created`` / ``session.updated``."""
        fmt: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            fmt["rate"] = PCM_RATE
        turn: dict[str, Any] | None = None
        if self.turn_detection:
            turn = {
                "type": "semantic_vad" if self.semantic else "server_vad",
                "threshold": threshold,
                "prefix_padding_ms": 300,
                "silence_duration_ms": self.silence_ms or default_silence_ms,
            }
        transcription: dict[str, Any] = {"model": self.model, "prompt": self.prompt}
        if self.language is not None:
            transcription["language"] = self.language
        if self.keywords:
            transcription["keywords"] = list(self.keywords)
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": fmt,
                    "transcription": transcription,
                    "turn_detection": turn,
                    "noise_reduction": None,
                }
            },
            "include": ["item.input_audio_transcription.logprobs"] if self.include_logprobs else [],
        }


def _obj(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"Invalid type for '{param}': expected an object.", param)
    return value


def _str(value: object, param: str, limit: int = 4000) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"Invalid type for '{param}': expected a string.", param)
    if len(value) > limit:
        raise ConfigError(f"Invalid '{param}': longer than {limit} characters.", param)
    return value


def apply_update(config: TranscriptionConfig, session: object) -> TranscriptionConfig:
    """``config`` with a ``session.update``'s ``session`` applied; ConfigError names what is wrong."""
    s = _obj(session, "session")
    kind = s.get("type", "transcription")
    if kind != "transcription":
        raise ConfigError(
            f"Invalid value for 'session.type': {str(kind)[:40]!r}. This server serves transcription "
            "sessions only ('transcription').",
            "session.type",
        )
    changes: dict[str, Any] = {}
    if "include" in s:
        include = s["include"]
        if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
            raise ConfigError(
                "Invalid type for 'session.include': expected an array of strings.", "session.include"
            )
        changes["include_logprobs"] = "item.input_audio_transcription.logprobs" in include
    audio_input = _obj(_obj(s.get("audio", {}), "session.audio").get("input", {}), "session.audio.input")
    if "format" in audio_input:
        fmt = _obj(audio_input["format"], "session.audio.input.format")
        kind = fmt.get("type")
        if kind not in FORMATS:
            raise ConfigError(
                f"Invalid value for 'session.audio.input.format.type': {str(kind)[:40]!r}. Supported "
                "values are: 'audio/pcm', 'audio/pcmu', 'audio/pcma'.",
                "session.audio.input.format.type",
            )
        if kind == "audio/pcm" and fmt.get("rate", PCM_RATE) != PCM_RATE:
            raise ConfigError(
                "Invalid value for 'session.audio.input.format.rate': audio/pcm is 24000 Hz.",
                "session.audio.input.format.rate",
            )
        changes["format"] = kind
    if "turn_detection" in audio_input:
        changes.update(_turn_detection(audio_input["turn_detection"]))
    if "transcription" in audio_input:
        changes.update(_transcription(audio_input["transcription"]))
    return replace(config, **changes)


_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}


def apply_beta_update(config: TranscriptionConfig, session: object) -> TranscriptionConfig:
    """The beta API's ``transcription_session.update`` (``input_audio_format``, ``input_audio_transcription``,
    ``turn_detection`` at the top of ``session``), mapped onto the same configuration."""
    s = _obj(session, "session")
    changes: dict[str, Any] = {}
    if "input_audio_format" in s:
        fmt = s["input_audio_format"]
        if fmt not in _BETA_FORMATS:
            raise ConfigError(
                f"Invalid value for 'session.input_audio_format': {str(fmt)[:40]!r}. Supported values are: "
                "'pcm16', 'g711_ulaw', 'g711_alaw'.",
                "session.input_audio_format",
            )
        changes["format"] = _BETA_FORMATS[fmt]
    if "turn_detection" in s:
        changes.update(_turn_detection(s["turn_detection"], "session.turn_detection"))
    if "input_audio_transcription" in s:
        changes.update(_transcription(s["input_audio_transcription"], "session.input_audio_transcription"))
    if "include" in s:
        include = s["include"]
        if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
            raise ConfigError(
                "Invalid type for 'session.include': expected an array of strings.", "session.include"
            )
        changes["include_logprobs"] = "item.input_audio_transcription.logprobs" in include
    return replace(config, **changes)


def beta_session(config: TranscriptionConfig, default_silence_ms: int, threshold: float) -> dict[str, Any]:
    """The beta API's ``transcription_session.updated`` session object."""
    ga = config.session(default_silence_ms, threshold)["audio"]["input"]
    beta_format = {v: k for k, v in _BETA_FORMATS.items()}[config.format]
    return {
        "object": "realtime.transcription_session",
        "input_audio_format": beta_format,
        "input_audio_transcription": ga["transcription"],
        "turn_detection": ga["turn_detection"],
        "input_audio_noise_reduction": None,
        "include": ["item.input_audio_transcription.logprobs"] if config.include_logprobs else [],
    }


def _turn_detection(turn: object, param: str = "session.audio.input.turn_detection") -> dict[str, Any]:
    if turn is None:
        return {"turn_detection": False, "semantic": False, "silence_ms": None}
    t = _obj(turn, param)
    kind = t.get("type")
    if kind not in ("server_vad", "semantic_vad"):
        raise ConfigError(
            f"Invalid value for '{param}.type': {str(kind)[:40]!r}. Supported values are: 'server_vad', "
            "'semantic_vad'.",
            f"{param}.type",
        )
    silence = t.get("silence_duration_ms")
    if silence is not None and (
        not isinstance(silence, int) or isinstance(silence, bool) or not 50 <= silence <= 5000
    ):
        raise ConfigError(
            f"Invalid value for '{param}.silence_duration_ms': an integer from 50 to 5000.",
            f"{param}.silence_duration_ms",
        )
    return {"turn_detection": True, "semantic": kind == "semantic_vad", "silence_ms": silence}


def _transcription(transcription: object, param: str = "session.audio.input.transcription") -> dict[str, Any]:
    t = _obj(transcription, param)
    changes: dict[str, Any] = {}
    if "model" in t:
        changes["model"] = _str(t["model"], f"{param}.model", 200)
    if "prompt" in t:
        changes["prompt"] = _str(t["prompt"], f"{param}.prompt")
    if "language" in t:
        language = t["language"]
        if language is not None:
            language = _str(language, f"{param}.language", 16)
        changes["language"] = language or None
    if "keywords" in t:
        keywords = t["keywords"]
        if not isinstance(keywords, list) or len(keywords) > MAX_HOTWORDS:
            raise ConfigError(
                f"Invalid '{param}.keywords': an array of at most {MAX_HOTWORDS} strings.",
                f"{param}.keywords",
            )
        changes["keywords"] = tuple(
            _str(k, f"{param}.keywords", MAX_HOTWORD_CHARS).strip() for k in keywords if k
        )
    return changes


def g711_to_pcm16(data: bytes, law: str) -> bytes:
    """G.711 bytes (``audio/pcmu`` mu-law or ``audio/pcma`` A-law) as 16-bit little-endian PCM."""
    table = _ULAW if law == "audio/pcmu" else _ALAW
    return table[np.frombuffer(data, np.uint8)].astype("<i2").tobytes()


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


_ULAW = _ulaw_table()
_ALAW = _alaw_table()


@dataclass
class ItemText:
    """What the client has been told of one item's transcript, as deltas."""

    sent: list[str] = field(default_factory=list)
    previous: list[str] = field(default_factory=list)


def pilot_delta(item: ItemText, partial: str) -> str:
    """The delta to send for a new pilot hypothesis, or "".

    Deltas only append, but pilots revise themselves: a word is sent once two pilots in a row agree on
    it and everything before it (local agreement), and only if it extends what was sent."""
    words = partial.split()
    agreed = _common_prefix(item.previous, words)
    item.previous = words
    return _extend(item, agreed)


def final_delta(item: ItemText, transcript: str) -> str:
    """The last delta before ``completed``: the rest of the final, when it extends what was sent."""
    return _extend(item, transcript.split())


def _extend(item: ItemText, words: Sequence[str]) -> str:
    n = len(item.sent)
    if len(words) <= n or list(words[:n]) != item.sent:
        return ""  # nothing new, or a revision of sent words: the completed transcript settles it
    new = list(words[n:])
    item.sent.extend(new)
    return (" " if n else "") + " ".join(new)


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> list[str]:
    out = []
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        out.append(x)
    return out


def event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


def error(code: str, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
          client_event_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The API's ``error`` event."""
    return {
        "type": "error",
        "event_id": event_id(),
        "error": {
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }
