"""NeMo-style manifests: one JSON object per line, audio paths relative to the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Utterance:
    path: Path
    text: str
    duration: float
    kind: str
    set: str


def load_manifests(paths: list[Path]) -> list[Utterance]:
    out = []
    for manifest in paths:
        for number, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio = manifest.parent / row["audio_filepath"]
                out.append(
                    Utterance(audio, str(row["text"]), float(row["duration"]), str(row.get("kind", "")),
                              manifest.parent.name)
                )  # fmt: skip
            except (KeyError, ValueError, TypeError) as exc:
                raise SystemExit(f"{manifest}:{number}: not a manifest line ({exc})") from None
            if not audio.is_file():
                raise SystemExit(f"{manifest}:{number}: no such audio file {audio}")
    return out
