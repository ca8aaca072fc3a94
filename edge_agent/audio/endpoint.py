"""Utterance endpointing from per-window VAD probabilities: a pure state machine (no audio, no model).

Positions are absolute sample indices since the stream start. Window ``k`` (the ``k``-th call to
:meth:`Endpointer.push`, from 0) covers samples ``[k W, (k + 1) W)`` with ``W = window_samples``; after
that call ``position == (k + 1) W``.

Speech/non-speech uses Silero's hysteresis: outside an utterance a window is speech when
``prob >= threshold``; inside one (or while a candidate burst is being timed) speech goes on while
``prob >= neg_threshold``; once silence has begun, only ``prob >= threshold`` counts as speech again
(probabilities in between neither start nor cancel a silence).

States and events, per pushed window ``k`` with probability ``p``:

* idle -> candidate when ``p >= threshold``; the candidate starts at ``k W``.
* candidate: ``p < neg_threshold`` drops the burst silently (no events at all). Once the burst has lasted
  ``min_speech_ms`` (``position - candidate >= min_speech``), :class:`SpeechStart` is emitted and the
  utterance is open. Its ``start_sample`` is the candidate minus ``pre_roll_ms``, clamped to 0, to the
  previous utterance's ``end_sample``, and (only with extreme settings) so the utterance still fits in
  ``max_utterance_s``.
* speech: ``p < neg_threshold`` -> :class:`SilenceBegan` at ``k W`` (the start of the first non-speech
  window), so the caller may start a speculative final decode.
* silence: ``p >= threshold`` -> :class:`SpeechResumed` (the speculative decode is stale). When the
  silence has lasted ``min_silence_ms`` (``position - silence_start >= min_silence``) ->
  :class:`SpeechEnd` with reason ``"silence"`` and ``end_sample = min(silence_start + end_pad, position)``.
* length cap: an utterance never exceeds ``max_utterance_s``. When one more window would take it past
  the cap (``position + W - start > max_utterance``), it ends now. In speech:
  ``SpeechEnd(start, position, "max_length")``, and if the next window is still speech
  (``p >= neg_threshold``) a new utterance starts at once with ``SpeechStart(position)`` (no pre-roll,
  which would overlap, and no ``min_speech_ms`` wait), emitted with that next window; otherwise back to
  idle. In silence: ``SpeechEnd(start, min(silence_start + end_pad, position), "max_length")`` and back
  to idle. Every utterance is non-empty.

Adaptive endpointing: :meth:`Endpointer.set_pause_silence` replaces ``min_silence_ms`` for the current
pause only (longer or shorter; back to ``min_silence_ms`` when speech resumes or the utterance ends). When
the pause has already lasted that long it ends the utterance at once (reason ``"silence"``, the same
``end_sample`` as above).

:meth:`Endpointer.flush` (end of stream) closes an open utterance with reason ``"stream_end"`` (ending at
``position``, or at the padded silence start if silence had begun) and drops an unconfirmed candidate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

EndReason = Literal["silence", "max_length", "stream_end", "commit"]


@dataclass(frozen=True)
class EndpointConfig:
    threshold: float
    """Probability at or above which a window starts (or resumes) speech."""
    min_silence_ms: int
    """Silence that ends an utterance."""
    min_speech_ms: int
    """Bursts shorter than this are ignored."""
    max_utterance_s: float
    """Utterances are cut so that none is longer than this."""
    pre_roll_ms: int
    """Audio before the first speech window that is included in the utterance."""
    window_samples: int = 512
    sample_rate: int = 16000
    end_pad_ms: int = 100
    """Audio after the start of the silence that is included in the utterance."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        for name in ("min_silence_ms", "min_speech_ms", "pre_roll_ms", "end_pad_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.window_samples <= 0 or self.sample_rate <= 0:
            raise ValueError("window_samples and sample_rate must be positive")
        if self.max_samples < self.min_speech_samples + 2 * self.window_samples:
            raise ValueError(
                f"max_utterance_s={self.max_utterance_s} is too short for min_speech_ms={self.min_speech_ms} "
                f"and {self.window_samples}-sample windows"
            )

    @property
    def neg_threshold(self) -> float:
        """``threshold - 0.15``, floored at 0.01 as in Silero (a lower value could never see silence)."""
        return max(self.threshold - 0.15, 0.01)

    def _samples(self, ms: float) -> int:
        return round(ms * self.sample_rate / 1000)

    @property
    def min_silence_samples(self) -> int:
        return self._samples(self.min_silence_ms)

    @property
    def min_speech_samples(self) -> int:
        return self._samples(self.min_speech_ms)

    @property
    def pre_roll_samples(self) -> int:
        return self._samples(self.pre_roll_ms)

    @property
    def end_pad_samples(self) -> int:
        return self._samples(self.end_pad_ms)

    @property
    def max_samples(self) -> int:
        return self._samples(self.max_utterance_s * 1000)


@dataclass(frozen=True)
class SpeechStart:
    """An utterance is open from ``start_sample`` (pre-roll included)."""

    start_sample: int


@dataclass(frozen=True)
class SilenceBegan:
    """Speech paused at ``at_sample``; the utterance ends there unless :class:`SpeechResumed` follows."""

    at_sample: int


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back before ``min_silence_ms``; the last :class:`SilenceBegan` is void."""


@dataclass(frozen=True)
class SpeechEnd:
    """The utterance ``[start_sample, end_sample)`` is complete."""

    start_sample: int
    end_sample: int
    reason: EndReason


EndpointEvent = SpeechStart | SilenceBegan | SpeechResumed | SpeechEnd


class _State(enum.Enum):
    IDLE = "idle"
    CANDIDATE = "candidate"
    SPEECH = "speech"
    SILENCE = "silence"
    CONTINUATION = "continuation"  # just cut at max_length; speech in the next window continues it


class Endpointer:
    """Turns one VAD probability per window into utterance events (see the module docstring)."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Back to sample 0 with no utterance."""
        self._state = _State.IDLE
        self._position = 0
        self._candidate = 0  # first speech window of the candidate burst
        self._start = 0  # start of the open utterance
        self._silence = 0  # start of the current silence
        self._prev_end = 0  # end of the previous utterance
        self._pause_silence: int | None = None  # silence the current pause needs (adaptive), if set

    @property
    def position(self) -> int:
        """Samples covered by the windows pushed so far."""
        return self._position

    @property
    def in_utterance(self) -> bool:
        """An utterance has been started (SpeechStart emitted) and not ended."""
        return self._state in (_State.SPEECH, _State.SILENCE)

    @property
    def utterance_start(self) -> int | None:
        return self._start if self.in_utterance else None

    def push(self, prob: float) -> list[EndpointEvent]:
        """Advance by one window of speech probability ``prob``; returns the events it caused, in order."""
        cfg = self.config
        window_start = self._position
        self._position += cfg.window_samples
        pos = self._position
        events: list[EndpointEvent] = []

        if self._state is _State.IDLE and prob >= cfg.threshold:
            self._state = _State.CANDIDATE
            self._candidate = window_start
        elif self._state is _State.CANDIDATE and prob < cfg.neg_threshold:
            self._state = _State.IDLE
        elif self._state is _State.SPEECH and prob < cfg.neg_threshold:
            self._state = _State.SILENCE
            self._silence = window_start
            events.append(SilenceBegan(window_start))
        elif self._state is _State.SILENCE and prob >= cfg.threshold:
            self._state = _State.SPEECH
            self._pause_silence = None
            events.append(SpeechResumed())
        elif self._state is _State.CONTINUATION:
            if prob >= cfg.neg_threshold:
                self._state = _State.SPEECH
                self._start = window_start
                events.append(SpeechStart(window_start))
            else:
                self._state = _State.IDLE

        if self._state is _State.CANDIDATE and pos - self._candidate >= cfg.min_speech_samples:
            self._start = max(
                self._candidate - cfg.pre_roll_samples,
                self._prev_end,
                pos + cfg.window_samples - cfg.max_samples,
                0,
            )
            self._state = _State.SPEECH
            events.append(SpeechStart(self._start))
        elif self._state is _State.SILENCE and pos - self._silence >= self._needed_silence():
            events.append(self._end(self._silence_end(), "silence"))
        elif self.in_utterance and pos + cfg.window_samples - self._start > cfg.max_samples:
            if self._state is _State.SPEECH:
                events.append(self._end(pos, "max_length"))
                self._state = _State.CONTINUATION
            else:
                events.append(self._end(self._silence_end(), "max_length"))
        return events

    def set_pause_silence(self, ms: float) -> list[EndpointEvent]:
        """The silence the current pause needs to end the utterance (adaptive endpointing). Ignored
        outside a pause. Returns ``[SpeechEnd]`` when the pause is already that long, else ``[]``."""
        if self._state is not _State.SILENCE:
            return []
        # Never shorter than the end pad: the utterance's end (pause start + pad) must be in already.
        self._pause_silence = max(round(ms * self.config.sample_rate / 1000), self.config.end_pad_samples)
        if self._position - self._silence >= self._pause_silence:
            return [self._end(self._silence_end(), "silence")]
        return []

    @property
    def pause_samples(self) -> int:
        """How long the current pause has lasted (0 outside a pause)."""
        return self._position - self._silence if self._state is _State.SILENCE else 0

    def _needed_silence(self) -> int:
        if self._pause_silence is not None:
            return self._pause_silence
        return self.config.min_silence_samples

    def flush(self, reason: EndReason = "stream_end") -> list[EndpointEvent]:
        """End of stream (or a client's commit): close an open utterance with ``reason``, drop an
        unconfirmed burst. Windows pushed afterwards start from idle."""
        if self._state is _State.SPEECH:
            return [self._end(self._position, reason)]
        if self._state is _State.SILENCE:
            return [self._end(self._silence_end(), reason)]
        self._state = _State.IDLE  # an unconfirmed burst or a continuation that never came
        return []

    def _silence_end(self) -> int:
        return min(self._silence + self.config.end_pad_samples, self._position)

    def _end(self, end: int, reason: EndReason) -> SpeechEnd:
        self._state = _State.IDLE
        self._pause_silence = None
        self._prev_end = end
        return SpeechEnd(self._start, end, reason)
