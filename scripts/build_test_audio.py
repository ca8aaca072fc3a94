"""Build the labelled speech used by the tests, from registry packages only.

* Real recordings from the pocketsphinx source distribution (LibriVox, card names, short commands).
* Synthetic speech from Debian's flite voices and espeak-ng for sentences written here.
* One long-form file (> 30 s) stitched from the real recordings with pauses.

Output: ``<out>/<set>/manifest.jsonl`` (NeMo style: audio_filepath relative to the manifest,
text, duration). Deterministic and cached: a set that exists is left alone.
Usage: ``python scripts/build_test_audio.py [OUT_DIR]`` (default ``.cache/test-audio``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
POCKETSPHINX = "pocketsphinx==5.1.1"
RATE = 16000

# Varied material: commands, numbers, names, questions, a long sentence.
SENTENCES = [
    "Turn the kitchen lights down to thirty percent.",
    "Set a timer for twenty five minutes and call it pasta.",
    "What is the weather going to be like in Boston tomorrow morning?",
    "Send a message to Maria saying I will be ten minutes late.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please schedule a meeting with Doctor Alvarez next Tuesday afternoon.",
    "Navigate to the nearest gas station that is open all night.",
    "Play some quiet piano music in the living room.",
    "My flight leaves at seven fifteen from gate forty two.",
    "Remind me to buy milk, eggs and bread when I get to the store.",
    "How many kilometers are there between Paris and Berlin?",
    "The committee approved the new budget after a long discussion about schools and roads.",
]
# (engine, voice) pairs; sentence i goes to voice i mod len(VOICES), so every voice is heard.
VOICES = [("flite", "slt"), ("flite", "rms"), ("flite", "awb"), ("flite", "kal16"), ("espeak-ng", "en-us")]


def _write_manifest(directory: Path, rows: list[dict[str, object]]) -> None:
    tmp = directory / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(directory / "manifest.jsonl")


def _to_16k(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != RATE:
        import soxr

        audio = soxr.resample(audio, rate, RATE)
    return audio.astype(np.float32)


def build_pocketsphinx(out: Path) -> None:
    target = out / "pocketsphinx"
    if (target / "manifest.jsonl").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                "pocketsphinx",
                POCKETSPHINX,
                "-d",
                tmp,
            ],
            check=True,
        )
        sdist = next(Path(tmp).glob("pocketsphinx-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/test/data/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        data = next(Path(tmp).glob("pocketsphinx-*/test/data"))
        rows: list[dict[str, object]] = []
        for wav in sorted((data / "librivox").glob("*.wav")):
            text = wav.with_suffix(".txt").read_text().strip()
            rows.append(_copy(wav, target / f"librivox_{wav.stem[-4:]}.wav", text, "read"))
        for line in (data / "cards" / "cards.transcription").read_text().splitlines():
            match = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\w+)\)", line)
            if match:
                wav = data / "cards" / f"{match.group(2)}.wav"
                rows.append(_copy(wav, target / f"cards_{match.group(2)}.wav", match.group(1), "cards"))
        forever = data / "forever" / "input_2_16k.wav"
        rows.append(_copy(forever, target / "forever.wav", "feels like these days go on forever", "short"))
        raw = np.fromfile(data / "goforward.raw", dtype="<i2").astype(np.float32) / 32768.0
        sf.write(target / "goforward.wav", raw, RATE, subtype="PCM_16")
        rows.append(_row(target / "goforward.wav", "go forward ten meters", "command"))
    _write_manifest(target, rows)


def _copy(src: Path, dst: Path, text: str, kind: str) -> dict[str, object]:
    sf.write(dst, _to_16k(src), RATE, subtype="PCM_16")
    return _row(dst, text, kind)


def _row(path: Path, text: str, kind: str) -> dict[str, object]:
    return {
        "audio_filepath": path.name,
        "text": text,
        "duration": round(sf.info(path).duration, 3),
        "kind": kind,
    }


def build_tts(out: Path) -> None:
    target = out / "tts"
    if (target / "manifest.jsonl").exists():
        return
    missing = [tool for tool in ("flite", "espeak-ng") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing TTS tools {missing}: apt-get install flite espeak-ng")
    target.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(SENTENCES):
        engine, voice = VOICES[i % len(VOICES)]
        raw = target / f"raw_{i:02d}.wav"
        if engine == "flite":
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True)
        else:
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        dst = target / f"tts_{i:02d}_{voice}.wav"
        sf.write(dst, _to_16k(raw), RATE, subtype="PCM_16")
        raw.unlink()
        rows.append(_row(dst, text, f"tts-{voice}"))
    _write_manifest(target, rows)


def build_long(out: Path) -> None:
    """One > 30 s file: every LibriVox clip, then the card names, with 1.2 s pauses between."""
    target = out / "long"
    if (target / "manifest.jsonl").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    source = out / "pocketsphinx"
    rows = [json.loads(line) for line in (source / "manifest.jsonl").read_text().splitlines()]
    pieces, texts = [], []
    pause = np.zeros(int(1.2 * RATE), dtype=np.float32)
    for row in rows:
        if row["kind"] in ("read", "cards"):
            audio, _ = sf.read(source / str(row["audio_filepath"]), dtype="float32")
            pieces += [audio, pause]
            texts.append(str(row["text"]))
    sf.write(target / "long.wav", np.concatenate(pieces), RATE, subtype="PCM_16")
    _write_manifest(target, [_row(target / "long.wav", " ".join(texts), "long")])


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".cache" / "test-audio"
    build_pocketsphinx(out)
    build_tts(out)
    build_long(out)
    print(f"test audio ready in {out}")


if __name__ == "__main__":
    main()
