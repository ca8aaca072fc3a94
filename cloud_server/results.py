"""Typed results of the cloud engine; asr_common/protos/speech.proto mirrors them."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOTWORD_PROMPT_TOKENS = 96
"""How much of Whisper's prompt a hotword list may fill (``WhisperEngine.hotword_prompt``)."""


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    """Seconds from the start of the request's audio."""
    end: float
    probability: float


@dataclass(frozen=True)
class Hypothesis:
    text: str
    confidence: float
    """exp(avg_logprob) scaled by (1 - no_speech_prob): 0..1."""
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Recognition:
    """An n-best answer for one utterance."""

    hypotheses: tuple[Hypothesis, ...]
    language: str
    language_probability: float
    audio_seconds: float
    model: str
    processing_seconds: float = 0.0
    pilot_tokens: int = 0
    """Leading tokens of the best hypothesis taken from the stream's pilot after verification on the
    full audio (0 without a usable pilot)."""
    pilot_audio_seconds: float = 0.0
    """Audio the pilot had decoded (0 without a pilot)."""


@dataclass(frozen=True)
class PilotHypothesis:
    """The cloud's pilot: a greedy decode of the audio a stream had received so far."""

    tokens: tuple[int, ...]
    """Text tokens (no special tokens); empty when the audio so far held no speech."""
    language: str
    prompt: str | None
    """The request's prompt the pilot was conditioned on: a final with another prompt cannot use it."""
    samples: int
    """Audio samples the pilot decoded (from the start of the stream)."""
    processing_seconds: float = 0.0
    hotwords: tuple[str, ...] = ()
    """The request's hotwords the pilot was conditioned on (as ``prompt``)."""


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """A timed transcript of a whole file (the REST path)."""

    text: str
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration: float
    model: str
    processing_seconds: float = 0.0


@dataclass(frozen=True)
class RecognizeOptions:
    language: str | None = None
    beam_size: int = 5
    n_best: int = 1
    word_timestamps: bool = False
    prompt: str | None = None
    hotwords: tuple[str, ...] = ()
    """Phrases to favour: Whisper is prompted with them (before ``prompt``) in every window."""
    languages: tuple[str, ...] = ()
    """With no ``language``: the languages detection may pick (empty: any the model knows)."""


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None
    beam_size: int = 5
    prompt: str | None = None
    """OpenAI's ``prompt``: conditions every window (a longer one keeps its last 223 tokens)."""
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    word_timestamps: bool = False
