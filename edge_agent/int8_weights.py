"""Serve a graph's int8 weights as int8: the shipped Moonshine graphs store each weight as int8 integers
``q`` dequantized by ``Cast -> Mul(scale) -> Add(offset)`` (one scale and offset per tensor, the offset
a whole multiple of the scale). onnxruntime folds those chains into fp32 initializers when it loads the
graph, so the weights sit in memory as fp32. Here every MatMul fed by such a chain (directly, or through
a 2-D Transpose, as the decoder's tied output projection is) becomes a ``MatMulNBits`` node holding the
same integers in 8-bit blocks (zero point ``128 - offset / scale``): the weights it multiplies are
exactly the shipped ones. A Gather of such a table (the token embedding) gathers the int8 rows first and
dequantizes only those.

What remains approximate is the arithmetic the node is asked for: ``accuracy_level`` 4 multiplies in
int8 (activations quantized per block), 0 dequantizes to fp32 first (exact, but for 8 bits onnxruntime
dequantizes the whole weight on every call, which made a decoder step 250 ms instead of 15).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCK = 32
"""Weights per block (MatMulNBits keeps a scale and zero point per block; all blocks share the tensor's)."""


@dataclass(frozen=True)
class AffineInt8:
    """A weight ``W = scale * (q + shift)`` held as int8 ``q``."""

    integers: str
    """Name of the int8 initializer."""
    scale: str
    offset: str
    """Names of the scalar initializers (``offset = scale * shift``)."""
    q: np.ndarray
    scale_value: float
    shift: int
    nodes: tuple[str, ...]
    """Output names of the Cast, Mul and Add nodes."""


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(attribute.g)


def find_chains(graph: onnx.GraphProto) -> dict[str, AffineInt8]:
    """The weights of ``graph`` (top level) held as affine int8 chains, by the chain's output name."""
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    chains: dict[str, AffineInt8] = {}
    for cast in graph.node:
        source = inits.get(cast.input[0]) if cast.op_type == "Cast" and cast.input else None
        if source is None or source.data_type != TensorProto.INT8 or len(source.dims) != 2:
            continue
        (mul, *more) = users.get(cast.output[0], [None])
        if more or mul is None or mul.op_type != "Mul" or mul.input[1] not in inits:
            continue
        (add, *more) = users.get(mul.output[0], [None])
        if more or add is None or add.op_type != "Add" or add.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[mul.input[1]])
        offset = numpy_helper.to_array(inits[add.input[1]])
        if scale.size != 1 or offset.size != 1 or float(scale.flat[0]) <= 0:
            continue
        shift = float(offset.flat[0]) / float(scale.flat[0])
        if abs(shift - round(shift)) > 1e-3 or not -127 <= round(shift) <= 128:
            continue  # not an integer zero point: no exact 8-bit form
        chains[add.output[0]] = AffineInt8(
            source.name,
            mul.input[1],
            add.input[1],
            numpy_helper.to_array(source),
            float(scale.flat[0]),
            round(shift),
            (cast.output[0], mul.output[0], add.output[0]),
        )
    return chains


def _blocks(rows: np.ndarray, shift: int) -> tuple[np.ndarray, int]:
    """``rows`` ([N, K] int8) as MatMulNBits' uint8 blocks [N, K / BLOCK, BLOCK] (padded with the zero
    point, which dequantizes to 0), and the zero point."""
    zero = 128 - shift
    stored = (rows.astype(np.int16) + 128).astype(np.uint8)
    pad = -rows.shape[1] % BLOCK
    if pad:
        stored = np.concatenate([stored, np.full((rows.shape[0], pad), zero, np.uint8)], axis=1)
    return np.ascontiguousarray(stored.reshape(rows.shape[0], -1, BLOCK)), zero


def pack_int8_weights(source: Path, target: Path, accuracy_level: int = 4) -> int:
    """Write ``source`` with its affine int8 MatMul weights as ``MatMulNBits`` (and its int8 tables
    gathered before dequantizing) to ``target``; returns how many weights were packed (0: nothing to do,
    nothing written)."""
    model = onnx.load(str(source))
    top = model.graph
    chains = find_chains(top)
    if not chains:
        return 0
    packed: dict[tuple[str, bool], tuple[str, int, int]] = {}
    new_initializers: list[TensorProto] = []

    def pack(chain: AffineInt8, transposed: bool) -> tuple[str, int, int]:
        key = (chain.integers, transposed)
        if key not in packed:
            rows = chain.q if transposed else chain.q.T  # MatMulNBits holds [N, K]: a row per output
            blocks, zero = _blocks(np.ascontiguousarray(rows), chain.shift)
            base = f"{chain.integers}{'_t' if transposed else ''}_q8"
            count = blocks.shape[0] * blocks.shape[1]
            new_initializers.extend(
                [
                    numpy_helper.from_array(blocks, base),
                    numpy_helper.from_array(np.full(count, chain.scale_value, np.float32), base + "_scales"),
                    numpy_helper.from_array(np.full(count, zero, np.uint8), base + "_zero_points"),
                ]
            )
            packed[key] = (base, rows.shape[1], rows.shape[0])
        return packed[key]

    # Inner graphs first: rebuilding a graph's node list copies its nodes, subgraphs and all.
    for graph in reversed(list(_subgraphs(top))):
        transposes = {
            node.output[0]: chains[node.input[0]]
            for node in graph.node
            if node.op_type == "Transpose"
            and node.input[0] in chains
            and all(list(a.ints) == [1, 0] for a in node.attribute if a.name == "perm")
        }
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
            if weight is not None and (weight in chains or weight in transposes):
                chain = chains.get(weight) or transposes[weight]
                base, k, n = pack(chain, weight in transposes)
                nodes.append(
                    helper.make_node(
                        "MatMulNBits",
                        [node.input[0], base, base + "_scales", base + "_zero_points"],
                        list(node.output),
                        name=f"{node.name}_q8",
                        domain="com.microsoft",
                        K=k,
                        N=n,
                        bits=8,
                        block_size=BLOCK,
                        accuracy_level=accuracy_level,
                    )
                )
            elif node.op_type == "Gather" and node.input[0] in chains:
                chain, rows = chains[node.input[0]], f"{node.output[0]}_int8"
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                nodes += [
                    helper.make_node("Gather", [chain.integers, node.input[1]], [rows], axis=axis),
                    helper.make_node("Cast", [rows], [rows + "_f"], to=TensorProto.FLOAT),
                    helper.make_node("Mul", [rows + "_f", chain.scale], [rows + "_s"]),
                    helper.make_node("Add", [rows + "_s", chain.offset], list(node.output)),
                ]  # fmt: skip
            else:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    top.initializer.extend(new_initializers)
    _drop_unused(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return len(packed)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove the nodes (in any graph) and the initializers nothing reads any more: the replaced chains,
    and the transposes that fed the replaced MatMuls."""
    top = model.graph
    while True:
        graphs = list(_subgraphs(top))
        used = {o.name for g in graphs for o in g.output}
        for graph in graphs:
            for node in graph.node:
                used.update(node.input)
        removed = 0
        for graph in reversed(graphs):  # inner graphs first (see pack_int8_weights)
            kept = [n for n in graph.node if any(o in used for o in n.output)]
            if len(kept) < len(graph.node):
                removed += len(graph.node) - len(kept)
                del graph.node[:]
                graph.node.extend(kept)
        if not removed:
            break
    initializers = [i for i in top.initializer if i.name in used]
    del top.initializer[:]
    top.initializer.extend(initializers)
