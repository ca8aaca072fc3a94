"""Finding models on disk, and assembling the bundled base model safely."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from cloud_server.model_store import BASE_PARTS, ModelNotAvailableError, _package_dir, resolve_model


def _assemble(cache: str) -> str:
    return str(resolve_model("base", Path(cache)).path)


def test_concurrent_assembly_gives_one_complete_model(tmp_path: Path) -> None:
    parts = [_package_dir(p) for p in BASE_PARTS]
    expected = sum((p / "data" / f"model.bin.part{i}").stat().st_size for i, p in enumerate(parts, 1) if p)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        paths = pool.map(_assemble, [str(tmp_path)] * 3)
    assert len(set(paths)) == 1
    model = Path(paths[0])
    assert (model / "model.bin").stat().st_size == expected
    assert {p.name for p in model.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".whisper-base-")] == []
    first = (model / "model.bin").read_bytes()[:4096]
    assert first == (parts[0] / "data" / "model.bin.part1").read_bytes()[:4096]  # type: ignore[operator]


def test_incomplete_copy_is_rebuilt(tmp_path: Path) -> None:
    model = resolve_model("base", tmp_path).path
    size = (model / "model.bin").stat().st_size
    with open(model / "model.bin", "r+b") as f:
        f.truncate(1000)
    assert (resolve_model("base", tmp_path).path / "model.bin").stat().st_size == size


def test_tiny_en_and_directories(tmp_path: Path) -> None:
    tiny = resolve_model("tiny.en", tmp_path)
    assert tiny.name == "tiny.en" and (tiny.path / "model.bin").is_file()
    by_path = resolve_model(str(tiny.path), tmp_path)
    assert by_path.path == tiny.path.resolve()


def test_unknown_models_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"tiny\.en"):
        resolve_model("large-v3", tmp_path)
    with pytest.raises(ModelNotAvailableError, match=r"missing model\.bin"):
        resolve_model(str(tmp_path), tmp_path)
