"""The language offramp: is this utterance English at all? Pure logic, no network code.

The edge models (Moonshine base, the bundled conformer) are English-only: other speech comes out as
English-sounding words, so the edge cannot name the language, but its decode shows it (low and flat token
probabilities, odd token rates, loops). A small logistic model per edge model turns the same decoding
statistics the confidence model uses (``edge_features``) into P(the speech is not English); fitted and
measured by ``scripts/fit_language.py`` on synthesized speech (``scripts/build_language_set.py``) and
shipped beside the calibration files (``edge_agent/calibration/language-*.json``).

At or above its threshold the utterance is *other-language*: it escalates with reason ``language`` and the
cloud is asked to detect the language (within ``EDGE_LANGUAGES``) instead of being told "English"; with
``EDGE_OTHER_LANGUAGES_TO_CLOUD=false`` it stays on the device and its final says it was not transcribed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edge_agent.asr.interface import TokenInfo
from edge_agent.confidence import EDGE_FEATURES, LogisticModel, edge_features

log = logging.getLogger(__name__)
LANGUAGE_VERSION = 1
ENGLISH = "en"
UNDETERMINED = "und"
"""ISO 639-2 "undetermined": the language of an utterance nobody transcribed."""
DEFAULT_LANGUAGES = ("en", "es", "de", "fr", "it", "pt", "nl")
# The language file for each shipped calibration file (``edge_agent.asr.registry`` names those per edge
# model, including the conformer's transducer head). Only Moonshine's ships: the bundled conformer garbles
# English it has not heard (unseen voices, noise) as badly as other languages, so its decode cannot tell
# them apart (fitted the same way, it flagged 10 % of held-out clean English and at most 28 % of any
# other language; BENCHMARKS.md, "Other languages"), and the offramp stays off for it.
SHIPPED = {
    "offramp-v1.json": "language-moonshine-v1.json",
    "offramp-conformer-v1.json": "language-conformer-v1.json",
    "offramp-conformer-rnnt-v1.json": "language-conformer-rnnt-v1.json",
}
_CODE = re.compile(r"^[a-z]{2,3}$")


def is_english(code: str) -> bool:
    """A language code that means English here: ``en``, or empty (a cloud that did not say)."""
    return code in ("", ENGLISH)


def parse_languages(value: str | Iterable[str]) -> tuple[str, ...]:
    """An allow-list of Whisper language codes (``"en,es,de"`` or a list): lower-cased, repeats dropped,
    English first (always allowed: English speech judged otherwise must still come back as English).
    Empty means any language the cloud's model knows. Raises ValueError for a malformed code."""
    items = value.split(",") if isinstance(value, str) else list(value)
    codes = tuple(dict.fromkeys(str(c).strip().lower() for c in items if str(c).strip()))
    for code in codes:
        if not _CODE.match(code):
            raise ValueError(f"EDGE_LANGUAGES: {code[:20]!r} is not a language code such as 'es' (ISO 639-1)")
    if codes and ENGLISH not in codes:
        codes = (ENGLISH, *codes)
    return codes


@dataclass(frozen=True)
class LanguageCalibration:
    """P(not English) models for one edge model: ``final`` for a finished decode, ``pilot`` for a decode of
    the audio so far (early escalation), with the thresholds chosen on the fitting data."""

    final: LogisticModel
    pilot: LogisticModel
    threshold: float
    """Other-language when the final model's P(not English) is at least this."""
    early_threshold: float
    """Other-language already at a pilot when the pilot model's P(not English) is at least this."""
    min_pilot_s: float = 1.0
    """No early decision on less audio than this."""
    model: str = ""
    """``AsrModel.name`` of the edge model the models were fitted on."""
    source: str = ""
    """What the models were fitted on and how the thresholds were chosen (free text)."""

    def save(self, path: Path, report: dict[str, object] | None = None) -> None:
        data: dict[str, object] = {
            "version": LANGUAGE_VERSION,
            "model": self.model,
            "final": self.final.to_json(),
            "pilot": self.pilot.to_json(),
            "threshold": self.threshold,
            "early_threshold": self.early_threshold,
            "min_pilot_s": self.min_pilot_s,
            "source": self.source,
        }
        if report is not None:
            data["fit"] = report
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def parse(cls, text: str) -> LanguageCalibration:
        data = json.loads(text)
        if data.get("version") != LANGUAGE_VERSION:
            raise ValueError(f"language model version {data.get('version')} is not {LANGUAGE_VERSION}")
        return cls(
            final=LogisticModel.from_json(data["final"]),
            pilot=LogisticModel.from_json(data["pilot"]),
            threshold=float(data["threshold"]),
            early_threshold=float(data["early_threshold"]),
            min_pilot_s=float(data.get("min_pilot_s", 1.0)),
            model=str(data.get("model", "")),
            source=str(data.get("source", "")),
        )

    @classmethod
    def shipped_for(cls, model_name: str) -> LanguageCalibration | None:
        """The language model shipped for ``model_name``; None when none was fitted on that model. A
        model of a family but not its bundled one (``conformer:/dir``) gets none: thresholds fitted on
        another model could drop English speech as foreign, so the offramp stays off until one is fitted
        on it (``scripts/fit_language.py``)."""
        from edge_agent.asr.registry import shipped_calibration

        calibration = shipped_calibration(model_name)
        name = SHIPPED.get(calibration) if calibration is not None else None
        if name is None:
            return None
        resource = resources.files("edge_agent") / "calibration" / name
        if not resource.is_file():
            return None
        loaded = cls.parse(resource.read_text())
        if loaded.model != model_name:
            log.warning(
                "language model %s was fitted on %s, not %s: not used", name, loaded.model, model_name
            )
            return None
        return loaded


@dataclass(frozen=True)
class LanguageVerdict:
    p_other: float
    """P(the speech is not English)."""
    other: bool
    """At or above the threshold: treat the utterance as another language."""


@dataclass(frozen=True)
class LanguagePolicy:
    """The language offramp's decisions, from the edge decode's features."""

    calibration: LanguageCalibration

    def at_pilot(
        self, tokens: Sequence[TokenInfo], audio_s: float, speech_ratio: float, agreement: float
    ) -> LanguageVerdict:
        """After a pilot: other-language already, on at least ``min_pilot_s`` of audio?"""
        c = self.calibration
        p = c.pilot.probability(edge_features(tokens, audio_s, speech_ratio, agreement, finished=True))
        return LanguageVerdict(p, audio_s >= c.min_pilot_s and bool(tokens) and p >= c.early_threshold)

    def at_final(
        self,
        tokens: Sequence[TokenInfo],
        audio_s: float,
        speech_ratio: float,
        agreement: float,
        finished: bool,
    ) -> LanguageVerdict:
        c = self.calibration
        p = c.final.probability(edge_features(tokens, audio_s, speech_ratio, agreement, finished))
        return LanguageVerdict(p, p >= c.threshold)


def language_policy(model_name: str, languages: Sequence[str]) -> LanguagePolicy | None:
    """The offramp for this edge model and allow-list; None (off) when only English is allowed (nothing
    to detect: requests ask for English, as without the offramp) or no model was fitted for this one."""
    if tuple(languages) == (ENGLISH,):
        return None
    calibration = LanguageCalibration.shipped_for(model_name)
    if calibration is None:
        log.info("no language model fitted on %s: other-language speech is not detected", model_name)
        return None
    return LanguagePolicy(calibration)


__all__ = ["DEFAULT_LANGUAGES", "EDGE_FEATURES", "LanguagePolicy", "language_policy", "parse_languages"]
