"""Fit the language offramp (P(not English) from the edge decode) for each edge model, and measure it.

    .venv/bin/python scripts/build_language_set.py          # the speech (once)
    .venv/bin/python scripts/fit_language.py [--models moonshine conformer conformer-rnnt] [--write]

Every clip of ``.cache/language-set`` goes through the edge model's stream interface the way a session
drives it while the user speaks: audio arrives in steps (the model's chunk for a natively streaming
model, else 400 ms after the first 600 ms), a pilot (``advance``) after each step, then the final
(``finalize``, verifying the last pilot). Features are ``edge_features`` of each pilot (those on at least
1 s of audio) and of the final, with the VAD's speech ratio, as the session computes them; they are cached
per model in ``.cache/language-set/features-<model>.jsonl``.

Fitting (``split == fit``): Spanish and German (label 1) against English (label 0; clean, white noise and
reverberation, flite and espeak-ng voices). Two logistic models over ``EDGE_FEATURES``: ``final`` on the
final decodes, ``pilot`` on every pilot decode. Thresholds, on the fitting clips only:

* ``threshold`` (final): the lowest that flags at most ``--max-english`` (2 %) of the English clips. The
  English clips it flags are noisy ones the edge garbled, which the confidence offramp escalates anyway
  (so English offload does not change); each still costs a detection request instead of an English one,
  and with ``EDGE_OTHER_LANGUAGES_TO_CLOUD=false`` a final that says "not transcribed";
* ``early_threshold`` (pilot): the lowest, not below ``threshold``, at which at most ``--max-english-early``
  (1 %) of the English clips have *any* pilot at or above it (a session looks at every pilot, and an early
  escalation streams audio before the final decode could confirm it).

The report is on held-out clips only (other sentences and voices; Italian, French, Portuguese and Dutch
never seen): per group, the share flagged at the final and the share flagged early. ``--write`` saves
``edge_agent/calibration/language-<model>-v1.json``, which the agent then uses for that model. Only
Moonshine's ships (the default ``--models``): the bundled conformer's heads fit the same way
(``--models conformer conformer-rnnt``) cannot tell other languages from English they garble (README,
"Other languages"), so no file is written for them unless asked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_agent.confidence import EDGE_FEATURES, LogisticModel, edge_features, fit_logistic  # noqa: E402
from edge_agent.language import SHIPPED, LanguageCalibration  # noqa: E402

RATE = 16000
SET = ROOT / ".cache" / "language-set"
CALIBRATION = ROOT / "edge_agent" / "calibration"
MIN_PILOT_S = 1.0
MAX_ENGLISH, MAX_ENGLISH_EARLY = 0.02, 0.01
PILOT_FIRST_S, PILOT_EVERY_S = 0.6, 0.4  # the session's defaults (EDGE_PILOT_MIN_AUDIO_MS, ..._NEW_AUDIO_MS)
# name -> (EDGE_MODEL, EDGE_CONFORMER_HEAD, the calibration file the registry ships for it)
MODELS: dict[str, tuple[str, Literal["auto", "ctc", "rnnt"], str]] = {
    "moonshine": ("moonshine", "auto", "offramp-v1.json"),
    "conformer": ("conformer", "ctc", "offramp-conformer-v1.json"),
    "conformer-rnnt": ("conformer", "rnnt", "offramp-conformer-rnnt-v1.json"),
}


@dataclass
class Clip:
    path: str
    text: str
    language: str
    group: str
    split: str
    voice: str
    condition: str
    edge_text: str
    final: dict[str, float]
    pilots: list[dict[str, float]]
    pilot_s: list[float]


def load_manifest(manifest: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def decode_set(name: str, rows: list[dict[str, Any]], cache: Path) -> list[Clip]:
    """Features of every clip under edge model ``name`` (cached: only new clips are decoded)."""
    from edge_agent.asr.registry import load_model
    from edge_agent.audio.vad import SileroVad
    from edge_agent.confidence import pilot_agreement
    from edge_agent.settings import EdgeSettings

    known: dict[str, Clip] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            clip = Clip(**json.loads(line))
            known[clip.path] = clip
    todo = [r for r in rows if r["audio_filepath"] not in known]
    if todo:
        family, head, _ = MODELS[name]
        settings = EdgeSettings(
            model=family, conformer_head=head, model_cache_dir=ROOT / ".cache" / "edge-models"
        )
        model = load_model(settings)
        vad = SileroVad()
        caps = model.capabilities
        step = (
            caps.chunk_samples if caps.native_streaming and caps.chunk_samples else int(PILOT_EVERY_S * RATE)
        )
        first = step if caps.native_streaming else int(PILOT_FIRST_S * RATE)
        started = time.perf_counter()
        with cache.open("a") as out:
            for n, row in enumerate(todo, 1):
                audio, rate = sf.read(SET / row["audio_filepath"], dtype="float32")
                assert rate == RATE
                probs = np.asarray(vad.create_stream().accept(audio))
                speech = probs >= settings.vad_threshold

                def ratio(samples: int, speech: np.ndarray = speech) -> float:
                    windows = speech[: max(1, samples // 512)]
                    return float(windows.mean()) if len(windows) else 0.0

                stream = model.create_stream()
                pilots: list[dict[str, float]] = []
                pilot_s: list[float] = []
                previous = None
                fed = 0
                for end in range(first, len(audio), step):
                    stream.accept(audio[fed:end])
                    fed = end
                    decoded = stream.advance(lambda: False)
                    if decoded is None:
                        continue
                    agreement = pilot_agreement(decoded, previous, caps.prefix_verification)
                    previous = decoded
                    if end / RATE >= MIN_PILOT_S and decoded.tokens:
                        pilots.append(edge_features(decoded.tokens, end / RATE, ratio(end), agreement, True))
                        pilot_s.append(end / RATE)
                stream.accept(audio[fed:])
                final = stream.finalize()
                agreement = pilot_agreement(final, previous, caps.prefix_verification)
                clip = Clip(
                    path=row["audio_filepath"],
                    text=row["text"],
                    language=row["language"],
                    group=row["group"],
                    split=row["split"],
                    voice=row["voice"],
                    condition=row["condition"],
                    edge_text=final.text,
                    final=edge_features(
                        final.tokens, len(audio) / RATE, ratio(len(audio)), agreement, final.finished
                    ),
                    pilots=pilots,
                    pilot_s=pilot_s,
                )
                out.write(json.dumps(clip.__dict__, ensure_ascii=False) + "\n")
                out.flush()
                known[clip.path] = clip
                if n % 25 == 0:
                    rate_s = (time.perf_counter() - started) / n
                    print(f"{name}: {n}/{len(todo)} clips, {rate_s:.2f} s each", flush=True)
    return [known[r["audio_filepath"]] for r in rows]


def lowest_threshold(english: Sequence[float], everything: Sequence[float], max_share: float) -> float:
    """The lowest threshold (decision: score >= threshold) at which at most ``max_share`` of the English
    scores are flagged: halfway between the highest English score that must stay below it and the next
    higher score of any clip (so the fit's margin is split evenly)."""
    ranked = sorted(english, reverse=True)
    allowed = int(np.floor(max_share * len(ranked)))
    if allowed >= len(ranked):
        return 0.0
    ceiling = ranked[allowed]  # must not be flagged
    above = [s for s in everything if s > ceiling]
    return float((ceiling + min(above)) / 2) if above else float(np.nextafter(ceiling, 1.0))


def fit(
    clips: list[Clip], max_english: float, max_english_early: float
) -> tuple[LanguageCalibration, dict[str, Any]]:
    train = [c for c in clips if c.split == "fit"]
    labels = [float(c.language != "en") for c in train]
    final = fit_logistic([c.final for c in train], labels, EDGE_FEATURES)
    pilot_rows = [(p, float(c.language != "en")) for c in train for p in c.pilots]
    pilot = fit_logistic([p for p, _ in pilot_rows], [y for _, y in pilot_rows], EDGE_FEATURES)
    p_final = [final.probability(c.final) for c in train]
    english_final = [p for p, c in zip(p_final, train, strict=True) if c.language == "en"]
    threshold = lowest_threshold(english_final, p_final, max_english)
    # Per clip, the highest pilot score: a session escalates at the first pilot at or above the threshold.
    p_pilot = [max((pilot.probability(p) for p in c.pilots), default=0.0) for c in train]
    english_pilot = [p for p, c in zip(p_pilot, train, strict=True) if c.language == "en"]
    early = max(threshold, lowest_threshold(english_pilot, p_pilot, max_english_early))
    calibration = LanguageCalibration(final, pilot, threshold, early, MIN_PILOT_S)
    report = {
        "fit_clips": {
            lang: sum(c.language == lang for c in train) for lang in sorted({c.language for c in train})
        },
        "fit_pilots": len(pilot_rows),
        "fit_flagged": rates(train, calibration),
    }
    return calibration, report


def verdicts(clip: Clip, calibration: LanguageCalibration) -> tuple[bool, bool, float | None]:
    """(flagged at the final, flagged at a pilot, seconds of audio at the first flagging pilot)."""
    at_final = calibration.final.probability(clip.final) >= calibration.threshold
    for features, seconds in zip(clip.pilots, clip.pilot_s, strict=True):
        if calibration.pilot.probability(features) >= calibration.early_threshold:
            return at_final, True, seconds
    return at_final, False, None


def rates(clips: list[Clip], calibration: LanguageCalibration) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for group in sorted({c.group for c in clips}):
        members = [c for c in clips if c.group == group]
        judged = [verdicts(c, calibration) for c in members]
        out[group] = {
            "clips": len(members),
            "final": float(np.mean([f for f, _, _ in judged])),
            "early": float(np.mean([e for _, e, _ in judged])),
            "either": float(np.mean([f or e for f, e, _ in judged])),
        }
    return out


def with_meta(calibration: LanguageCalibration, model: str, source: str) -> LanguageCalibration:
    return LanguageCalibration(
        calibration.final,
        calibration.pilot,
        calibration.threshold,
        calibration.early_threshold,
        calibration.min_pilot_s,
        model=model,
        source=source,
    )


def model_name(name: str) -> str:
    """``AsrModel.name`` of the bundled model behind ``name`` (what the shipped files record)."""
    from edge_agent.asr.registry import FAMILIES

    family, head, _ = MODELS[name]
    return FAMILIES[family].model_name + ("+rnnt" if head == "rnnt" else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["moonshine"])
    parser.add_argument("--set", type=Path, default=SET, help="the language set (build_language_set.py)")
    parser.add_argument("--max-english", type=float, default=MAX_ENGLISH)
    parser.add_argument("--max-english-early", type=float, default=MAX_ENGLISH_EARLY)
    parser.add_argument("--write", action="store_true", help="write edge_agent/calibration/language-*.json")
    args = parser.parse_args(argv)
    rows = load_manifest(args.set / "manifest.jsonl")
    for name in args.models:
        clips = decode_set(name, rows, args.set / f"features-{name}.jsonl")
        calibration, report = fit(clips, args.max_english, args.max_english_early)
        held = [c for c in clips if c.split == "held-out"]
        report["held_out_flagged"] = rates(held, calibration)
        source = (
            f"scripts/fit_language.py on .cache/language-set (recipe of scripts/build_language_set.py): "
            f"{len([c for c in clips if c.split == 'fit'])} fitting clips (es, de against en); thresholds "
            f"flag at most {100 * args.max_english:g} % (final) and {100 * args.max_english_early:g} % "
            f"(any pilot) of the English fitting clips"
        )
        calibration = with_meta(calibration, model_name(name), source)
        print(f"== {name} ({calibration.model}): threshold {calibration.threshold:.3f}, "
              f"early {calibration.early_threshold:.3f}")  # fmt: skip
        print(json.dumps(report, indent=1))
        if args.write:
            path = CALIBRATION / SHIPPED[MODELS[name][2]]
            calibration.save(path, report)
            print(f"wrote {path}")


__all__ = ["LogisticModel", "main"]

if __name__ == "__main__":
    main()
