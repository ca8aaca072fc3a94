"""Labelled test audio and WER."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
from whisper_normalizer.english import EnglishTextNormalizer

_normalize = EnglishTextNormalizer()


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str
    duration: float
    kind: str

    def samples(self) -> np.ndarray:
        audio, rate = sf.read(self.path, dtype="float32")
        assert rate == 16000
        return audio

    def pcm16(self) -> bytes:
        return (np.clip(self.samples(), -1, 1) * 32767).astype("<i2").tobytes()


def load_manifest(path: Path) -> list[Clip]:
    clips = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        clips.append(
            Clip(path.parent / row["audio_filepath"], row["text"], row["duration"], row.get("kind", ""))
        )
    return clips


def normalize(text: str) -> str:
    return " ".join(_normalize(text).split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after Whisper's English normalization (numbers, punctuation, casing)."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))
