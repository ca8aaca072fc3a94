"""The rebuilt Moonshine graphs reproduce the shipped ``.ort`` ones and are cached safely."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
import pytest

from edge_agent.asr.moonshine import ort_convert
from edge_agent.asr.moonshine.ort_convert import (
    DECODER_ORT,
    ENCODER_ORT,
    ModelFiles,
    ModelVerificationError,
    default_model_dir,
    ensure_onnx_models,
)

TOLERANCE = 1e-3


@pytest.fixture(scope="session")
def source_dir() -> Path:
    # moonshine-cpp is a dependency: a missing model is a failure, not a skip.
    return default_model_dir()


@pytest.fixture(scope="session")
def built(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelFiles]:
    cache_dir = tmp_path_factory.mktemp("edge-models")
    return cache_dir, ensure_onnx_models(source_dir, cache_dir)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def sessions(source_dir: Path, built: tuple[Path, ModelFiles]) -> dict[str, ort.InferenceSession]:
    files = built[1]
    return {
        "encoder.ort": _session(source_dir / ENCODER_ORT),
        "decoder.ort": _session(source_dir / DECODER_ORT),
        "encoder.onnx": _session(files.encoder),
        "decoder.onnx": _session(files.decoder),
    }


def _audio(seconds: float, seed: int) -> np.ndarray:
    """Seeded noise shaped a little like speech: bursts of band-limited noise with pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    noise = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / 16000)
    return (0.3 * noise * envelope).astype(np.float32)[None, :]


def _run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _decoder_feed(
    session: ort.InferenceSession, tokens: list[int], hidden: np.ndarray, past: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Inputs for the merged decoder: the uncached branch when ``past`` is None, else the cached one."""
    use_cache = past is not None
    if past is None:
        empty = np.zeros((1, 8, 0, 52), dtype=np.float32)
        past = {i.name: empty for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    return {
        "input_ids": np.array([tokens], dtype=np.int64),
        "encoder_hidden_states": hidden,
        **past,
        "use_cache_branch": np.array([use_cache]),
    }


def test_encoder_matches_original(sessions: dict[str, ort.InferenceSession]) -> None:
    audio = _audio(3.0, seed=7)
    want = _run(sessions["encoder.ort"], {"input_values": audio})["last_hidden_state"]
    got = _run(sessions["encoder.onnx"], {"input_values": audio})["last_hidden_state"]
    assert got.shape == want.shape
    assert want.shape[1] > 100  # ~41 frames per second: the whole clip was encoded
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_decoder_matches_original_uncached_and_cached(sessions: dict[str, ort.InferenceSession]) -> None:
    hidden = _run(sessions["encoder.ort"], {"input_values": _audio(3.0, seed=11)})["last_hidden_state"]
    original, rebuilt = sessions["decoder.ort"], sessions["decoder.onnx"]

    # Uncached branch: one parallel pass over several tokens.
    tokens = [1, 400, 1000, 5]
    feed = _decoder_feed(original, tokens, hidden, past=None)
    assert not feed["use_cache_branch"][0]
    want, got = _run(original, feed), _run(rebuilt, feed)
    assert got["logits"].shape == want["logits"].shape == (1, len(tokens), 32768)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=TOLERANCE)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=TOLERANCE, err_msg=name)

    # One cached step on the original's cache: self-attention keys/values grow, cross-attention ones stay.
    past = {
        name: want[name.replace("past_key_values.", "present.")]
        for name in (i.name for i in original.get_inputs())
        if name.startswith("past_key_values.")
    }
    feed = _decoder_feed(original, [int(np.argmax(want["logits"][0, -1]))], hidden, past=past)
    assert feed["use_cache_branch"][0]
    step_want, step_got = _run(original, feed), _run(rebuilt, feed)
    assert step_want["present.0.decoder.key"].shape[2] == len(tokens) + 1
    assert step_got["logits"].shape == step_want["logits"].shape == (1, 1, 32768)
    np.testing.assert_allclose(step_got["logits"], step_want["logits"], rtol=0, atol=TOLERANCE)
    assert np.argmax(step_got["logits"]) == np.argmax(step_want["logits"])


def test_rebuilt_graphs_are_standard_onnx_without_runtime_dequantization(
    built: tuple[Path, ModelFiles],
) -> None:
    import onnx

    model = onnx.load(built[1].decoder)
    onnx.checker.check_model(model)
    # The int8 weights are still there; their dequantization is now a constant subgraph that onnxruntime
    # folds at load. A loaded .ort would keep running these Cast nodes on every call.
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    assert [n.op_type for n in model.graph.node].count("If") == 1


def test_second_call_reuses_cache(
    source_dir: Path, built: tuple[Path, ModelFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir, files = built
    mtimes = [files.encoder.stat().st_mtime_ns, files.decoder.stat().st_mtime_ns]

    def fail(*args: object) -> None:
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(ort_convert, "convert_ort_to_onnx", fail)
    again = ensure_onnx_models(source_dir, cache_dir)
    assert again == files
    assert [again.encoder.stat().st_mtime_ns, again.decoder.stat().st_mtime_ns] == mtimes


def test_changed_source_gets_a_new_cache_key(source_dir: Path, tmp_path: Path) -> None:
    sources = tmp_path / "src"
    sources.mkdir()
    for name in (ENCODER_ORT, DECODER_ORT):
        shutil.copyfile(source_dir / name, sources / name)
    key = ort_convert._cache_key(sources)
    assert ort_convert._cache_key(sources) == key
    stat = (sources / DECODER_ORT).stat()
    os.utime(sources / DECODER_ORT, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert ort_convert._cache_key(sources) != key


def test_unverified_model_is_never_published(
    source_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(source: Path, files: ModelFiles) -> float:
        raise ModelVerificationError("decoder differs")

    monkeypatch.setattr(ort_convert, "verify_models", broken)
    with pytest.raises(ModelVerificationError):
        ensure_onnx_models(source_dir, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_verification_catches_a_wrong_graph(
    source_dir: Path, built: tuple[Path, ModelFiles], tmp_path: Path
) -> None:
    import onnx
    from onnx import numpy_helper

    # The rebuilt encoder with one weight tensor scaled by 1.5: same interface, different numbers.
    model = onnx.load(built[1].encoder)
    weight = next(
        t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 100
    )
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(model, tmp_path / "encoder.onnx")
    with pytest.raises(ModelVerificationError, match="encoder"):
        ort_convert.verify_models(source_dir, ModelFiles(tmp_path / "encoder.onnx", built[1].decoder))


def _build_in_child(source_dir: str, cache_dir: str) -> tuple[str, str, bytes, bytes]:
    files = ensure_onnx_models(Path(source_dir), Path(cache_dir))
    return str(files.encoder), str(files.decoder), files.encoder.read_bytes(), files.decoder.read_bytes()


def test_concurrent_builds_agree(source_dir: Path, tmp_path: Path) -> None:
    # Left over by a build that was killed: must not be mistaken for a result, and gets cleaned up.
    stale = tmp_path / f".build-{ort_convert._cache_key(source_dir)}-killed"
    stale.mkdir()
    (stale / "decoder.onnx").write_bytes(b"partial")
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        first, second = pool.starmap(_build_in_child, [(str(source_dir), str(tmp_path))] * 2)
    assert first[:2] == second[:2]
    assert first[2] == second[2] and first[3] == second[3]
    assert Path(first[0]).read_bytes() == first[2]
    # One published entry, no leftover build directories.
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
