"""Adaptive endpointing: how much silence ends *this* utterance, from what the system already knows.

A fixed silence (``min_silence_ms``) makes every final wait the same time, however sure the system is
that the speaker has finished. Once the speculative final (decoded at the first pause) is in, this policy
says how long the pause must last:

* ``incomplete`` -> ``slow_ms``: the text ends in a word that cannot end a sentence (a conjunction, an
  article, a preposition: "and", "the", "of"...) or in a comma, or the VAD probability is rising again
  inside the pause (the speaker is taking a breath, not stopping).
* ``complete`` -> ``fast_ms``: the model writes punctuation and, right after the text's last word, gave
  at least ``end_confidence`` to ending it there (a ``.``, ``?`` or ``!``, or the end of the sequence:
  ``Decoded.p_end``; Moonshine often hesitates between writing the full stop and stopping without one,
  which is no doubt that the sentence is over); the model ended the decode itself (end of sequence);
  the pilot's words but its last (a pilot may cut a word in half) are a prefix of the final's (the
  running hypothesis held); and the VAD probability of the pause's last ``QUIET_WINDOWS`` windows is
  at most ``quiet_vad`` (well below the speech threshold; the first windows of a pause are still fading
  out).
* otherwise ``base_ms`` (the fixed endpoint's ``min_silence_ms``).

A model that writes no punctuation (the conformer) never gets ``complete``: its text alone cannot tell
a sentence's end from a pause inside it.

Pure: no audio, no model, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["complete", "incomplete", "default"]

# Words after which an English sentence almost never ends: conjunctions, articles and possessive
# determiners, and prepositions that need an object. Words that often end one ("it", "you", "in", "can",
# "that") are left out: a wrong "incomplete" only costs latency, but it costs it on every such sentence.
DANGLING = frozenset(
    """
    and or but nor because although though whereas unless if whether than
    a an the my your our their its every each
    of to with from into onto between through during without among toward towards upon
    """.split()
)
_WORD = re.compile(r"[a-z0-9']+")  # numbers are words: "down to 30%." does not end with "to"
QUIET_WINDOWS = 2


@dataclass(frozen=True)
class AdaptiveEndpointConfig:
    base_ms: int = 500
    """Silence when nothing is known either way (the fixed endpoint)."""
    fast_ms: int = 160
    """Silence that ends an utterance judged complete."""
    slow_ms: int = 900
    """Silence that ends an utterance judged incomplete."""
    quiet_vad: float = 0.1
    """Highest VAD probability inside the pause that still counts as quiet."""
    rising_vad: float = 0.2
    """A VAD probability inside the pause this high, and above the pause's minimum by half of it, is a
    speaker about to go on."""
    end_confidence: float = 0.9
    """Probability the model must give to the text ending where it ends (``EndpointEvidence.p_end``)
    to call it complete."""

    def __post_init__(self) -> None:
        if not 0 < self.fast_ms <= self.base_ms <= self.slow_ms:
            raise ValueError(
                f"need 0 < fast_ms <= base_ms <= slow_ms, got {self.fast_ms}, {self.base_ms}, {self.slow_ms}"
            )
        for name in ("quiet_vad", "rising_vad", "end_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class EndpointEvidence:
    """What is known when the speculative final is in."""

    text: str
    """The speculative final's text."""
    finished: bool
    """The model ended the decode itself (not cut by a bound or a stop check)."""
    p_end: float | None
    """P(the text ends where it ends), from the model (``Decoded.p_end``; None: not known)."""
    pilot_text: str | None
    """The last pilot's text (None when no pilot ran)."""
    punctuates: bool
    """The model writes punctuation."""
    pause_vad: Sequence[float]
    """VAD probabilities of the windows since the pause began, in order."""


@dataclass(frozen=True)
class EndpointDecision:
    verdict: Verdict
    silence_ms: int
    why: str


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def _rising(vad: Sequence[float], config: AdaptiveEndpointConfig) -> bool:
    if not vad:
        return False
    last, low = vad[-1], min(vad)
    return last >= config.rising_vad and last - low >= config.rising_vad / 2


def decide(evidence: EndpointEvidence, config: AdaptiveEndpointConfig) -> EndpointDecision:
    """The silence this utterance's pause must reach before the endpoint fires."""
    text = evidence.text.strip()
    said = words(text)
    if not said:
        return EndpointDecision("default", config.base_ms, "no words")
    if said[-1] in DANGLING:
        return EndpointDecision("incomplete", config.slow_ms, f"ends with {said[-1]!r}")
    if text.endswith((",", ";", ":", "-")):
        return EndpointDecision("incomplete", config.slow_ms, "ends with a comma")
    if _rising(evidence.pause_vad, config):
        return EndpointDecision("incomplete", config.slow_ms, "VAD rising in the pause")
    if not evidence.punctuates:
        return EndpointDecision("default", config.base_ms, "model writes no punctuation")
    if evidence.p_end is None:
        return EndpointDecision("default", config.base_ms, "sentence end unknown")
    if evidence.p_end < config.end_confidence:
        return EndpointDecision("default", config.base_ms, f"sentence end uncertain (p={evidence.p_end:.2f})")
    if not evidence.finished:
        return EndpointDecision("default", config.base_ms, "decode did not end by itself")
    pilot = words(evidence.pilot_text or "")[:-1]  # its last word may be cut off mid-word
    if pilot and said[: len(pilot)] != pilot:
        return EndpointDecision("default", config.base_ms, "pilot and final disagree")
    if evidence.pause_vad and max(evidence.pause_vad[-QUIET_WINDOWS:]) > config.quiet_vad:
        return EndpointDecision("default", config.base_ms, "pause not quiet")
    return EndpointDecision("complete", config.fast_ms, "sentence end, stable, quiet")
