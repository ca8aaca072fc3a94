"""What the fuzz tests share: bounded hypothesis settings and a tally of what was tried, written to
``.cache/fuzz/<name>.json`` (and printed with ``-s``) so the counts can be reported."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

OUT_DIR = Path(__file__).resolve().parent.parent / ".cache" / "fuzz"


def fuzz_settings(max_examples: int) -> settings:
    """``max_examples`` scaled by ``FUZZ_SCALE`` (default 1), no deadline (the servers share a loaded
    machine), derandomized under CI (``CI=true``) so a run there is reproducible; locally each run
    draws new examples and keeps failing ones in ``.hypothesis/`` to replay first."""
    scale = float(os.environ.get("FUZZ_SCALE", "1"))
    return settings(
        max_examples=max(1, round(max_examples * scale)),
        deadline=None,
        derandomize=os.environ.get("CI", "").lower() in ("1", "true", "yes"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def pick(*strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``strategies``, each about equally often (``st.one_of`` can favour some a lot)."""
    return st.sampled_from(strategies).flatmap(lambda strategy: strategy)


@dataclass
class Tally:
    """Counts of one fuzz test. ``crashes`` are answers that break the property (a 1011 close, a dropped
    connection, UNKNOWN/INTERNAL, a wrong or missing error); ``server_errors`` 5xx answers; ``hangs``
    answers that did not come within the bound."""

    name: str
    unit: str
    tried: int = 0
    crashes: int = 0
    server_errors: int = 0
    hangs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0
    """The longest one example took (a session, a request, a stream)."""
    started: float = field(default_factory=time.monotonic)

    @contextmanager
    def timed(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)

    def summary(self) -> str:
        return (
            f"fuzz: {self.name} {self.unit}={self.tried} crashes={self.crashes} "
            f"5xx={self.server_errors} hangs={self.hangs}"
        )

    def write(self) -> Path:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        path = OUT_DIR / f"{self.name}.json"
        document: dict[str, Any] = {
            "name": self.name,
            "unit": self.unit,
            "tried": self.tried,
            "crashes": self.crashes,
            "5xx": self.server_errors,
            "hangs": self.hangs,
            "seconds": round(time.monotonic() - self.started, 1),
            "slowest_s": round(self.slowest_s, 2),
            "outcomes": dict(sorted(self.outcomes.items())),
            **({"counts": dict(sorted(self.extra.items()))} if self.extra else {}),
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(self.summary())
        return path

    def clean(self) -> bool:
        return self.crashes == 0 and self.server_errors == 0 and self.hangs == 0
