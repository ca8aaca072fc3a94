"""``edge-agent quantize``: real onnxruntime quantization of both edge models, the agreement gate, and
the quantized models serving through the agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edge_agent.asr.conformer.stream import BUNDLED
from edge_agent.asr.registry import FAMILIES, ModelSpec, load_model
from edge_agent.quantize import (
    MIN_AGREEMENT,
    REPORT,
    QuantizationRefused,
    default_clips,
    ensure_quantized,
    quantize,
    read_clips,
    source_graphs,
    token_edits,
    word_errors,
)
from edge_agent.settings import EdgeSettings
from tests.speech import Clip

ROOT = Path(__file__).resolve().parent.parent
TEST_TTS = ROOT / ".cache" / "test-audio" / "tts" / "manifest.jsonl"


def _load(spec: ModelSpec) -> object:
    return FAMILIES[spec.family].load(spec, EdgeSettings())


def _ops(path: Path) -> Counter[str]:
    """Operator counts in a graph and its subgraphs."""
    found: Counter[str] = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(onnx.load(str(path)).graph)
    return found


def test_token_edits_and_word_errors_count_exactly() -> None:
    assert token_edits([1, 2, 3, 4], [1, 2, 3, 4]) == 0
    assert token_edits([1, 2, 3, 4], [1, 3, 4]) == 1
    assert token_edits([1, 2, 3, 4], [5, 2, 3, 4, 6]) == 2
    assert token_edits([], [7, 8]) == 2
    assert word_errors("Turn the lights DOWN, please.", "turn the light down please") == (1, 5)
    assert word_errors("It's ten o'clock.", "its ten o'clock") == (1, 3)


def test_read_clips_takes_references_beside_files_and_from_manifests(
    tmp_path: Path, tts_clips: list[Clip]
) -> None:
    import soundfile as sf

    clip = tts_clips[0]
    # A 24 kHz copy with its reference beside it: resampled to 16 kHz on reading.
    audio = clip.samples()
    import soxr

    sf.write(tmp_path / "a.wav", soxr.resample(audio, 16000, 24000), 24000)
    (tmp_path / "a.txt").write_text(clip.text + "\n")
    sf.write(tmp_path / "b.wav", audio, 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "b.wav", "text": "hello"}) + "\n")
    clips = read_clips([tmp_path / "a.wav", manifest])
    assert [c.reference for c in clips] == [clip.text, "hello"]
    assert abs(len(clips[0].audio) - len(audio)) <= 16
    assert clips[0].audio.dtype == np.float32
    assert read_clips([tmp_path / "a.wav", manifest], limit=1)[0].name == "a.wav"


def test_conformer_graphs_keep_their_layout_without_the_int8_suffix(tmp_path: Path) -> None:
    graphs, others = source_graphs(ModelSpec("conformer"), tmp_path)
    assert sorted(g.name for g in graphs) == ["decoder.onnx", "encoder.onnx", "joiner.onnx", "model.onnx"]
    assert {p.name for p in others} == {"tokens.txt", "training.json"}


@pytest.mark.parametrize("method", ["int8", "w8", "int4"])
def test_conformer_quantized_keeps_its_metadata_and_agrees_with_the_source(
    method: str, tmp_path: Path
) -> None:
    # The bundled conformer's encoder is int8 operators already: each method quantizes the MatMuls it
    # left in fp32.
    out = tmp_path / f"conformer-{method}"
    clips = read_clips([*default_clips(), TEST_TTS], 9)
    check = quantize(ModelSpec("conformer"), out, method, clips, _load, tmp_path / "cache", 0.7)  # type: ignore[arg-type]
    assert check.clips == 9 and check.source_tokens > 50
    assert 0.7 <= check.agreement <= 1.0
    report = json.loads((out / REPORT).read_text())
    assert report["method"] == method and report["agreement"] == pytest.approx(check.agreement)
    assert (out / "tokens.txt").read_bytes() == (BUNDLED / "tokens.txt").read_bytes()
    before, after = _ops(BUNDLED / "encoder.int8.onnx"), _ops(out / "encoder.onnx")
    if method == "int8":
        assert after["MatMulInteger"] > before["MatMulInteger"] and after["MatMul"] < before["MatMul"]
    else:
        assert after["MatMulNBits"] > 0 and after["MatMul"] < before["MatMul"]
    # The streaming settings NeMo exports in the metadata survive quantization.
    source_meta = {p.key: p.value for p in onnx.load(str(BUNDLED / "model.int8.onnx")).metadata_props}
    new_meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert source_meta and new_meta == source_meta


def test_a_model_that_disagrees_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "models" / "refused"
    clips = read_clips(default_clips())
    with pytest.raises(QuantizationRefused, match="required 101%"):
        quantize(ModelSpec("conformer"), out, "int4", clips, _load, tmp_path / "cache", 1.01)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no build directory left behind
    # And an existing directory is never overwritten.
    out.mkdir()
    with pytest.raises(FileExistsError):
        quantize(ModelSpec("conformer"), out, "int8", clips, _load, tmp_path / "cache", 0.0)


def test_the_command_writes_a_model_the_agent_loads_or_says_why_not(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "edge_agent.cli", "quantize", "--model", "conformer", "--method", "int8"]
    # The bundled conformer is a weak model: its tokens move more under quantization than a strong
    # model's, so it is held to 70 % on the sample and the test clips.
    cmd += ["--audio", str(default_clips()[0]), str(TEST_TTS), "--min-agreement", "0.7"]
    env = {**os.environ, "EDGE_MODEL_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([*cmd, str(tmp_path / "q")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"use EDGE_MODEL=conformer:{tmp_path / 'q'}" in done.stdout
    model = load_model(EdgeSettings(model=f"conformer:{tmp_path / 'q'}"))
    assert model.name == "conformer:q+rnnt"
    refused = subprocess.run(
        [*cmd, str(tmp_path / "r"), "--min-agreement", "1.01"],  # the last --min-agreement counts
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert refused.returncode == 1
    assert (
        "edge-agent quantize: the int8 model reproduces" in refused.stderr
        and "nothing written" in refused.stderr
    )
    assert not (tmp_path / "r").exists()


def test_a_cached_quantized_copy_is_built_once_and_a_refused_one_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    entry = ensure_quantized(ModelSpec("conformer"), "int8", cache, _load, min_agreement=0.7)
    assert entry is not None and entry.parent == cache
    built = (entry / "model.onnx").stat().st_mtime_ns
    assert ensure_quantized(ModelSpec("conformer"), "int8", cache, _load, min_agreement=0.7) == entry
    assert (entry / "model.onnx").stat().st_mtime_ns == built  # reused, not rebuilt
    # Another method is another entry; one the check refuses leaves nothing behind and says why.
    assert ensure_quantized(ModelSpec("conformer"), "int4", cache, _load, min_agreement=1.01) is None
    assert "serving the model as shipped" in caplog.text
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [entry.name]


def test_the_default_moonshine_serves_its_quantized_copy(edge_model: Any) -> None:
    method = EdgeSettings().quantization
    files = edge_model.model.files
    report = files.encoder.parent / REPORT
    if method == "none":
        assert not report.exists()
    else:
        figures = json.loads(report.read_text())
        assert figures["method"] == method and figures["agreement"] >= MIN_AGREEMENT
        assert files.decoder.parent == files.encoder.parent
    plain = load_model(EdgeSettings(quantization="none"))
    assert not (plain.model.files.encoder.parent / REPORT).exists()  # type: ignore[attr-defined]
