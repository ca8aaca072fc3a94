"""Packing a graph's affine int8 weights into MatMulNBits: the same integers, the same products."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.int8_weights import find_chains, pack_int8_weights

K, N, VOCAB = 40, 24, 10  # K not a multiple of the 32-weight block: the last block is padded


def _chain(
    name: str, q: np.ndarray, scale: float, shift: int
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``W = scale * (q + shift)`` as the shipped graphs write it: Cast -> Mul -> Add."""
    nodes = [
        helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}_f", f"{name}_scale"], [f"{name}_m"]),
        helper.make_node("Add", [f"{name}_m", f"{name}_offset"], [name]),
    ]
    inits = [
        numpy_helper.from_array(q.astype(np.int8), f"{name}_q"),
        numpy_helper.from_array(np.array([scale], np.float32), f"{name}_scale"),
        numpy_helper.from_array(np.array([scale * shift], np.float32), f"{name}_offset"),
    ]
    return nodes, inits


def _model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """x [2, K] @ W [K, N] at the top level, and inside an If branch: a token table gathered by ids and
    multiplied (transposed) as a tied output projection, as Moonshine's decoder does."""
    rng = np.random.default_rng(0)
    w_nodes, w_inits = _chain("w", rng.integers(-128, 128, (K, N)), 0.01, -65)
    e_nodes, e_inits = _chain("e", rng.integers(-128, 128, (VOCAB, K)), 0.02, 3)
    branch = helper.make_graph(
        [
            helper.make_node("Gather", ["e", "ids"], ["rows"], axis=0),
            helper.make_node("Transpose", ["e"], ["e_t"]),  # no perm: reversed axes
            helper.make_node("MatMul", ["rows", "e_t"], ["logits"]),
        ],
        "branch",
        [],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
    )
    top = helper.make_graph(
        [
            *w_nodes,
            *e_nodes,
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("If", ["flag"], ["z"], then_branch=branch, else_branch=branch),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, N]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        initializer=[*w_inits, *e_inits],
    )
    model = helper.make_model(top, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    feeds = {
        "x": rng.standard_normal((2, K)).astype(np.float32),
        "ids": np.array([0, 7, 3]),
        "flag": np.array(True),
    }
    return path, feeds


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)  # type: ignore[no-any-return]


def _ops(path: Path) -> Counter[str]:
    found: Counter[str] = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(onnx.load(str(path)).graph)
    return found


def test_chains_are_found_with_their_integer_shift(tmp_path: Path) -> None:
    path, _ = _model(tmp_path)
    chains = find_chains(onnx.load(str(path)).graph)
    assert sorted(chains) == ["e", "w"]
    assert (chains["w"].shift, chains["e"].shift) == (-65, 3)
    assert chains["w"].scale_value == pytest.approx(0.01)


@pytest.mark.parametrize("level", [0, 4])
def test_packed_weights_are_the_shipped_integers(tmp_path: Path, level: int) -> None:
    path, feeds = _model(tmp_path)
    out = tmp_path / f"packed{level}.onnx"
    assert pack_int8_weights(path, out, accuracy_level=level) == 2  # W, and the table transposed
    ops = _ops(out)
    # Every weight MatMul and the transpose became MatMulNBits; the chains are gone but for the rows a
    # Gather picks, which are dequantized after it.
    assert ops["MatMulNBits"] == 3 and ops["MatMul"] == 0 and ops["Transpose"] == 0
    assert ops["Gather"] == 2 and ops["Cast"] == 2
    initializers = {i.name: i.data_type for i in onnx.load(str(out)).graph.initializer}
    assert TensorProto.FLOAT not in [
        t for n, t in initializers.items() if not n.endswith(("_scale", "_offset", "_scales"))
    ]
    (y0, z0), (y1, z1) = _run(path, feeds), _run(out, feeds)
    if level == 0:  # fp32 arithmetic: the products of the very same weights
        np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(z1, z0, rtol=1e-5, atol=1e-4)
    else:  # int8 products: activations quantized per block of 32
        assert np.abs(y1 - y0).max() < 0.02 * np.abs(y0).max()
        assert np.abs(z1 - z0).max() < 0.02 * np.abs(z0).max()


def test_a_graph_without_int8_chains_is_left_alone(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert pack_int8_weights(path, tmp_path / "out.onnx") == 0
    assert not (tmp_path / "out.onnx").exists()
