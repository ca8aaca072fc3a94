"""NeMo-style manifests: one JSON object per line, audio paths relative to the manifest.

Beyond ``audio_filepath``, ``text``, ``duration`` and ``kind``, a row may say where its speech is:
``speech_start``/``speech_end`` (seconds from the clip start; trailing silence comes after
``speech_end``), and ``segments`` (the sentences of a multi-sentence item, each with ``text``,
``speech_start``, ``speech_end``; ``start``/``end`` are read too). A row without them gets an estimate
from the audio (of its clean ``source`` when it names one: noise would hide where the speech ends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speech_bench.segments import estimate_speech_span


@dataclass(frozen=True)
class Segment:
    """One sentence of a multi-sentence item; times in seconds from the clip start."""

    text: str
    speech_start: float
    speech_end: float


@dataclass(frozen=True)
class Utterance:
    path: Path
    text: str
    duration: float
    kind: str
    set: str
    speech_start: float | None = None
    """Seconds from the clip start to the first speech (None: not known, the clip start is used)."""
    speech_end: float | None = None
    """Seconds from the clip start to the end of the speech, before any trailing silence (None: not
    known, the clip end is used)."""
    segments: tuple[Segment, ...] = ()
    """The sentences of an item made to test endpointing across pauses; empty for one utterance."""
    speech_estimated: bool = False
    """The speech span was estimated from the audio, not read from the manifest."""

    def to_row(self) -> dict[str, Any]:
        """The manifest fields (the audio path as given, not made relative)."""
        row: dict[str, Any] = {
            "audio_filepath": str(self.path), "text": self.text, "duration": self.duration,
            "kind": self.kind, "set": self.set, "speech_start": self.speech_start,
            "speech_end": self.speech_end, "speech_estimated": self.speech_estimated,
        }  # fmt: skip
        if self.segments:
            row["segments"] = [s.__dict__.copy() for s in self.segments]
        return row


def _segment(row: dict[str, Any]) -> Segment:
    start = row["speech_start"] if "speech_start" in row else row["start"]
    end = row["speech_end"] if "speech_end" in row else row["end"]
    return Segment(str(row["text"]), float(start), float(end))


def parse_row(row: dict[str, Any], base: Path, set_name: str) -> Utterance:
    """An utterance from a manifest row, paths relative to ``base``; no estimate (see load_manifests)."""
    segments = tuple(_segment(s) for s in row.get("segments") or ())
    start, end = row.get("speech_start"), row.get("speech_end")
    if segments and start is None:
        start = segments[0].speech_start
    if segments and end is None:
        end = segments[-1].speech_end
    return Utterance(
        path=base / row["audio_filepath"],
        text=str(row["text"]),
        duration=float(row["duration"]),
        kind=str(row.get("kind", "")),
        set=set_name,
        speech_start=None if start is None else float(start),
        speech_end=None if end is None else float(end),
        segments=segments,
        speech_estimated=bool(row.get("speech_estimated", False)),
    )


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(rate)


def estimated(utterance: Utterance, source: Path | None = None) -> Utterance:
    """The utterance with its speech span estimated from the audio, or from ``source`` (the clean clip a
    noisy one was made from) when that is a file of the same length."""
    audio, rate = _read_mono(utterance.path)
    if source is not None and source.is_file():
        clean, clean_rate = _read_mono(source)
        if clean_rate == rate and len(clean) == len(audio):
            audio = clean
    span = estimate_speech_span(audio, rate)
    if span is None:  # silence: nothing to cut, the whole clip is streamed
        return utterance
    start = span[0] if utterance.speech_start is None else utterance.speech_start
    end = span[1] if utterance.speech_end is None else utterance.speech_end
    return Utterance(
        utterance.path, utterance.text, utterance.duration, utterance.kind, utterance.set,
        speech_start=round(start, 3), speech_end=round(end, 3), segments=utterance.segments,
        speech_estimated=True,
    )  # fmt: skip


def _source(row: dict[str, Any], *bases: Path) -> Path | None:
    """The clean clip a noisy row was made from: relative to the manifest, or to the clip (the bench
    sets' noisy rows keep their ``source`` when a subset manifest elsewhere lists them)."""
    if not row.get("source"):
        return None
    return next((base / row["source"] for base in bases if (base / row["source"]).is_file()), None)


def load_manifests(paths: list[Path], *, estimate: bool = True) -> list[Utterance]:
    """Every row of the manifests; with ``estimate``, rows that do not say where their speech is get an
    estimate from the audio (older manifests of the bench sets, other people's manifests)."""
    out = []
    for manifest in paths:
        for number, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                utterance = parse_row(row, manifest.parent, manifest.parent.name)
                source = _source(row, manifest.parent, utterance.path.parent)
            except (KeyError, ValueError, TypeError) as exc:
                raise SystemExit(f"{manifest}:{number}: not a manifest line ({exc})") from None
            if not utterance.path.is_file():
                raise SystemExit(f"{manifest}:{number}: no such audio file {utterance.path}")
            if estimate and (utterance.speech_start is None or utterance.speech_end is None):
                utterance = estimated(utterance, source)
            out.append(utterance)
    return out
