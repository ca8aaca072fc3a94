"""A target offload rate that holds on the traffic the agent actually hears. Pure logic.

A fixed P(wrong) threshold escalates the share of utterances it escalated on the calibration set only
while the audio looks like that set: on other voices, microphones and noise the edge's confidences shift,
and the same threshold may send almost nothing to the cloud (or far too much). With a target rate the
threshold follows the recent utterances instead: it is the P(wrong) that ``rate`` of the last ``window``
finished decodes exceeded, so about that share escalates on any audio, and always the least confident
ones. Until ``min_samples`` decodes were seen it is the threshold derived from the calibration set.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class OffloadTarget:
    rate: float
    """Share of utterances to escalate for low confidence (0..1)."""
    fallback: float
    """The threshold until enough decodes were seen (the calibration set's for ``rate``)."""
    window: int = 200
    """How many recent decodes the threshold follows."""
    min_samples: int = 20
    """Decodes seen before the threshold follows them rather than ``fallback``."""
    _recent: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"target offload rate {self.rate} is not within 0..1")
        if self.window < 1 or not 1 <= self.min_samples <= self.window:
            raise ValueError("need 1 <= min_samples <= window")
        self._recent = deque(maxlen=self.window)

    def observe(self, p_wrong: float) -> None:
        """A finished decode's P(edge result wrong) (one per utterance, whether it escalated or not)."""
        if math.isfinite(p_wrong):
            self._recent.append(p_wrong)

    @property
    def seen(self) -> int:
        return len(self._recent)

    def threshold(self) -> float:
        """Escalate when P(wrong) is above this: ``ceil(rate * n)`` of the last ``n`` decodes were."""
        n = len(self._recent)
        if n < self.min_samples:
            return self.fallback
        above = math.ceil(self.rate * n - 1e-9)
        if above <= 0:
            return math.inf
        if above >= n:
            return -math.inf
        ordered = sorted(self._recent, reverse=True)
        return ordered[above]  # the largest value not escalated: those strictly above it are ``above``
