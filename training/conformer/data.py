"""Synthesize the conformer's training and held-out speech with offline TTS voices.

Training voices: espeak-ng accents x voice variants x speeds x pitches, and flite kal/kal16/awb/rms.
Held-out voices (never trained on): flite slt, espeak-ng en-gb-x-gbcwmd, piper joe and hibari af_heart.
Each set is one ``.npz`` (int16 audio concatenated, offsets) plus a JSON-lines manifest.

    python -m training.conformer.data --out .cache/conformer-data
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from training.conformer.text import normalize, sentence_pool

RATE = 16000
ESPEAK_TRAIN = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = (
    "",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
)
FLITE_TRAIN = ("kal", "kal16", "awb", "rms")


@dataclass(frozen=True)
class VoiceSpec:
    engine: str  # espeak | flite | piper | hibari
    name: str
    speed: int = 0
    pitch: int = 0

    @property
    def label(self) -> str:
        return f"{self.engine}/{self.name}" + (f"@{self.speed}/{self.pitch}" if self.speed else "")


def train_voice(r: random.Random) -> VoiceSpec:
    if r.random() < 0.3:
        return VoiceSpec("flite", r.choice(FLITE_TRAIN))
    variant = r.choice(ESPEAK_VARIANTS)
    name = r.choice(ESPEAK_TRAIN) + (f"+{variant}" if variant else "")
    return VoiceSpec("espeak", name, speed=r.randint(125, 195), pitch=r.randint(25, 75))


def held_out_voices(r: random.Random) -> list[VoiceSpec]:
    variant = r.choice(ESPEAK_VARIANTS)
    return [
        VoiceSpec("flite", "slt"),
        VoiceSpec("espeak", "en-gb-x-gbcwmd" + (f"+{variant}" if variant else ""), 160, 50),
        VoiceSpec("piper", "en_US-joe-medium"),
        VoiceSpec("hibari", "af_heart"),
    ]


def _read(path: Path) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return np.asarray(soxr.resample(mono, rate, RATE) if rate != RATE else mono, dtype=np.float32)


_NEURAL: dict[str, Callable[[str], np.ndarray]] = {}


def _neural(engine: str) -> Callable[[str], np.ndarray]:
    if engine not in _NEURAL:
        import importlib.util
        import sys

        root = Path(__file__).resolve().parents[2]
        spec = importlib.util.spec_from_file_location("_bench_sets", root / "scripts" / "build_bench_sets.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        synth = module._piper() if engine == "piper" else module._hibari()
        _NEURAL[engine] = lambda text: synth(text, 7)
    return _NEURAL[engine]


def synthesize(text: str, voice: VoiceSpec) -> np.ndarray:
    if voice.engine in ("piper", "hibari"):
        return np.asarray(_neural(voice.engine)(text), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        if voice.engine == "espeak":
            cmd = [
                "espeak-ng",
                "-v",
                voice.name,
                "-s",
                str(voice.speed),
                "-p",
                str(voice.pitch),
                "-w",
                str(out),
                text,
            ]
        else:
            cmd = ["flite", "-voice", voice.name, "-t", text, "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        return _read(out)


def _trim_and_level(audio: np.ndarray, r: random.Random) -> np.ndarray:
    # Keep 50-300 ms of the voice's own silence at each end, then a random level (-32..-18 dBFS).
    loud = np.flatnonzero(np.abs(audio) > 0.01 * (np.abs(audio).max() + 1e-9))
    if len(loud) == 0:
        return audio
    start = max(0, loud[0] - int(RATE * r.uniform(0.05, 0.3)))
    end = min(len(audio), loud[-1] + int(RATE * r.uniform(0.05, 0.3)))
    clip = audio[start:end]
    rms = float(np.sqrt(np.mean(clip**2))) + 1e-9
    gain = 10 ** (r.uniform(-32, -18) / 20) / rms
    return np.clip(clip * gain, -1, 1)


def _job(args: tuple[int, str, VoiceSpec]) -> tuple[int, np.ndarray | None]:
    index, text, voice = args
    try:
        audio = synthesize(text, voice)
    except (subprocess.SubprocessError, OSError, RuntimeError):
        return index, None
    return index, _trim_and_level(audio, random.Random(index))


def write_set(out: Path, rows: Sequence[tuple[str, VoiceSpec]], workers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    clips: dict[int, np.ndarray] = {}
    jobs = [(i, text, voice) for i, (text, voice) in enumerate(rows)]
    neural = [j for j in jobs if j[2].engine in ("piper", "hibari")]
    plain = [j for j in jobs if j[2].engine not in ("piper", "hibari")]
    with ProcessPoolExecutor(workers) as pool:
        for done, (index, audio) in enumerate(pool.map(_job, plain, chunksize=64)):
            if audio is not None and len(audio) > RATE // 4:
                clips[index] = audio
            if done % 2000 == 0:
                print(f"{out.name}: {done}/{len(plain)}", flush=True)
    for index, text, voice in neural:  # one process: these load a model each
        _, audio = _job((index, text, voice))
        if audio is not None:
            clips[index] = audio
    order = sorted(clips)
    pcm = [np.round(clips[i] * 32767).astype(np.int16) for i in order]
    offsets = np.cumsum([0, *[len(p) for p in pcm]])
    np.savez(out / "audio.npz", pcm=np.concatenate(pcm), offsets=offsets)
    with (out / "manifest.jsonl").open("w") as f:
        for k, i in enumerate(order):
            text, voice = rows[i]
            row = {"index": k, "text": normalize(text), "spoken": text, "voice": voice.label,
                   "duration": len(pcm[k]) / RATE}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    print(f"{out}: {len(order)} clips, {offsets[-1] / RATE / 3600:.2f} h", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/conformer-data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--held-out-per-voice", type=int, default=150)
    parser.add_argument("--only", choices=("train", "test"), default=None)
    parser.add_argument(
        "--pool",
        choices=("fortunes", "wordnet"),
        default="fortunes",
        help="fortunes: the first set; wordnet: a second, disjoint set of WordNet's examples and definitions",
    )
    parser.add_argument("--definitions", type=int, default=20000, help="WordNet definitions to sample")
    args = parser.parse_args(argv)
    r = random.Random(args.seed)
    train, test = sentence_pool(pool=args.pool, definitions=args.definitions)
    if args.only in (None, "train"):
        write_set(args.out / "train", [(s, train_voice(r)) for s in train], args.workers)
    if args.only in (None, "test"):
        picked = r.sample(test, min(len(test), args.held_out_per_voice))
        write_set(args.out / "test-seen-voices", [(s, train_voice(r)) for s in picked], args.workers)
        rows = [(s, v) for s in picked for v in held_out_voices(r)]
        write_set(args.out / "test-new-voices", rows, args.workers)


if __name__ == "__main__":
    main()
