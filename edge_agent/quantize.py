"""``edge-agent quantize OUT``: a lower-bit copy of an edge model, checked against its source on speech.

Methods, all onnxruntime's own quantization tools:

- ``int8``: dynamic quantization: every MatMul's weights int8 per output channel, its activations
  quantized per call (``quantize_dynamic``).
- ``int4``: weight-only 4-bit blockwise MatMul (``MatMulNBits``, symmetric blocks of 32); activations and
  arithmetic stay fp32.
- ``w8``: the same weight-only MatMul with 8-bit blocks, multiplied in int8 (accuracy level 4).
  Weights that ship as int8 (Moonshine's) keep their very integers (``edge_agent.int8_weights``);
  others are quantized from fp32 (symmetric blocks of 32).

The shipped graphs hold int8 weights behind dequantization nodes that onnxruntime folds into fp32
initializers when it loads them (which is why the agent held fp32 weights in memory). ``int8`` and
``int4`` start from that folded fp32 graph; ``w8`` packs the shipped integers as they are.

The new graphs must agree with the source on real speech: both decode every check clip, and the share
of the source's tokens the new model reproduces (1 - token edit distance / source tokens) must reach
``min_agreement``. A model that falls short is not written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edge_agent.asr.interface import AsrModel
from edge_agent.asr.registry import ModelSpec

log = logging.getLogger(__name__)

Method = Literal["int8", "int4", "w8"]
METHODS: tuple[Method, ...] = ("int8", "int4", "w8")
BLOCK_SIZE = 32
"""Weights per scale in the weight-only methods: 32 keeps 4-bit error small at ~0.6 bytes a weight."""
MIN_AGREEMENT = 0.85
"""Default share of the source's tokens the new model must reproduce on the check clips."""
REPORT = "quantization.json"
CACHE_FORMAT = 2
"""Bump when the quantized graphs this module writes change (the agent's cached copies are rebuilt)."""


class QuantizationRefused(RuntimeError):
    """The quantized model disagrees with its source beyond the allowed limit; nothing was written."""


@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray
    """16 kHz mono float32."""
    reference: str | None = None


@dataclass(frozen=True)
class Check:
    clips: int
    source_tokens: int
    token_edits: int
    agreement: float
    """1 - token edits / source tokens."""
    source_wer: float | None
    """Word error rate of source and new model against the clips' references (None: no references)."""
    quantized_wer: float | None


@dataclass(frozen=True)
class Graph:
    source: Path
    name: str
    """File name in the new model directory."""


def fold_weights(source: Path, target: Path) -> None:
    """``source`` with its dequantization chains folded into fp32 initializers (onnxruntime's basic,
    provider-independent optimizations: constant folding and redundant-node elimination)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    # The optimizer writes the graph without the model's metadata: a NeMo export keeps its streaming
    # settings (chunk sizes, caches) there, so carry it over.
    original = onnx.load(str(source), load_external_data=False)
    if original.metadata_props:
        folded = onnx.load(str(target))
        del folded.metadata_props[:]
        folded.metadata_props.extend(original.metadata_props)
        onnx.save(folded, str(target))


def quantize_graph(fp32: Path, target: Path, method: Method) -> None:
    """Write ``fp32`` quantized by ``method`` to ``target``. Every method stores the token embedding
    table (a Gather) as int8 rows dequantized as they are looked up: in fp32 it is a third of
    Moonshine's decoder, and the weight-only tool cannot quantize it without raising the opset."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    def dynamic(source: Path, op_types: list[str]) -> None:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=op_types,
            # Moonshine's decoder graphs sit inside If branches (with and without a cache).
            extra_options={"EnableSubgraph": True},
        )

    if method == "int8":
        dynamic(fp32, ["MatMul", "Gather"])
        return
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32)),
        bits=4 if method == "int4" else 8,
        block_size=BLOCK_SIZE,
        # 4 bits: asymmetric blocks (a zero point per block) kept 88 % of Moonshine's tokens where
        # symmetric ones kept 66 %. 8 bits: symmetric is exact enough, and accuracy level 4 (int8
        # products) runs at the speed of the int8 kernels where fp32 products took five times as long.
        is_symmetric=method == "w8",
        accuracy_level=4 if method == "w8" else None,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    weight_only = target.with_suffix(".nbits.onnx")
    quantizer.model.save_model_to_file(str(weight_only), use_external_data_format=False)
    try:
        dynamic(weight_only, ["Gather"])
    finally:
        weight_only.unlink(missing_ok=True)


def source_graphs(spec: ModelSpec, cache_dir: Path) -> tuple[list[Graph], list[Path]]:
    """The ONNX graphs of ``spec``'s model and the other files its directory needs (tokenizer, tokens)."""
    if spec.family == "moonshine":
        from edge_agent.asr.moonshine.ort_convert import default_model_dir, ensure_onnx_models
        from edge_agent.asr.moonshine.stream import prebuilt_graphs

        directory = spec.path or default_model_dir()
        prebuilt = prebuilt_graphs(directory)
        files = prebuilt or ensure_onnx_models(directory, cache_dir)
        graphs = [Graph(files.encoder, "encoder.onnx"), Graph(files.decoder, "decoder.onnx")]
        return graphs, [directory / "tokenizer.bin"]
    if spec.family == "conformer":
        from edge_agent.asr.conformer.stream import BUNDLED

        directory = spec.path or BUNDLED
        graphs = [
            Graph(path, path.name.replace(".int8.onnx", ".onnx")) for path in sorted(directory.glob("*.onnx"))
        ]
        names = [g.name for g in graphs]
        if len(set(names)) != len(names):
            raise ValueError(f"{directory}: holds both an .onnx and an .int8.onnx copy of a graph")
        others = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix != ".onnx"]
        return graphs, others
    raise ValueError(f"no quantizer for model family {spec.family!r}")


def token_edits(source: Sequence[int], other: Sequence[int]) -> int:
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(list(source), list(other)))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words) after casefolding and dropping punctuation, as the confidence
    model's labels count them."""
    from rapidfuzz.distance import Levenshtein

    from edge_agent.confidence import text_words

    ref, hyp = text_words(reference), text_words(hypothesis)
    return int(Levenshtein.distance(ref, hyp)), len(ref)


def transcribe(model: AsrModel, audio: np.ndarray) -> tuple[tuple[int, ...], str]:
    """Token ids and text of ``model``'s final for a whole utterance."""
    stream = model.create_stream()
    stream.accept(audio)
    final = stream.finalize()
    return final.ids, final.text


def transcripts(model: AsrModel, clips: Iterable[Clip]) -> list[tuple[tuple[int, ...], str]]:
    return [transcribe(model, clip.audio) for clip in clips]


def compare(
    source: Sequence[tuple[tuple[int, ...], str]],
    quantized: Sequence[tuple[tuple[int, ...], str]],
    clips: Sequence[Clip],
) -> Check:
    """Agreement and WER of the quantized model's transcripts against the source's on ``clips``."""
    if not clips:
        raise ValueError("no clips to check the quantized model on")
    tokens = edits = ref_words = source_err = quant_err = 0
    for clip, (src_ids, src_text), (q_ids, q_text) in zip(clips, source, quantized, strict=True):
        tokens += len(src_ids)
        edits += token_edits(src_ids, q_ids)
        if clip.reference is not None:
            e, words = word_errors(clip.reference, src_text)
            source_err += e
            ref_words += words
            quant_err += word_errors(clip.reference, q_text)[0]
        log.debug("%s: source %r, quantized %r", clip.name, src_text, q_text)
    return Check(
        clips=len(clips),
        source_tokens=tokens,
        token_edits=edits,
        agreement=1.0 - edits / max(1, tokens),
        source_wer=source_err / ref_words if ref_words else None,
        quantized_wer=quant_err / ref_words if ref_words else None,
    )


def read_clips(paths: Sequence[Path], limit: int | None = None) -> list[Clip]:
    """Audio files (any rate soundfile reads; resampled to 16 kHz), or NeMo-style JSONL manifests of
    ``{"audio_filepath", "text"}``. A file ``X.wav`` with ``X.txt`` beside it gets that reference."""
    import soundfile as sf
    import soxr  # type: ignore[import-untyped, unused-ignore]

    entries: list[tuple[Path, str | None]] = []
    for path in paths:
        if path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    entries.append((path.parent / row["audio_filepath"], row.get("text")))
        else:
            ref = path.with_suffix(".txt")
            entries.append((path, ref.read_text().strip() if ref.is_file() else None))
    clips = []
    for path, reference in entries[:limit]:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if rate != 16000:
            mono = soxr.resample(mono, rate, 16000).astype(np.float32)
        clips.append(Clip(path.name, np.ascontiguousarray(mono, dtype=np.float32), reference))
    return clips


def default_clips() -> list[Path]:
    """The recording that ships in the package (the agent's own sample)."""
    return [Path(__file__).parent / "samples" / "demo.flac"]


def quantize(
    spec: ModelSpec,
    out: Path,
    method: Method,
    clips: Sequence[Clip],
    load: Callable[[ModelSpec], AsrModel],
    cache_dir: Path,
    min_agreement: float = MIN_AGREEMENT,
) -> Check:
    """Write ``spec``'s model quantized by ``method`` to the new directory ``out``, if it agrees with the
    source on ``clips``; otherwise raise QuantizationRefused and write nothing."""
    from edge_agent.int8_weights import pack_int8_weights

    if out.exists():
        raise FileExistsError(f"{out} exists; quantize writes a new directory")
    graphs, others = source_graphs(spec, cache_dir)
    # One model in memory at a time: the source's transcripts first, then the new model's.
    source = transcripts(load(spec), clips)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for graph in graphs:
                start = Path(scratch) / graph.name
                if method == "w8" and (packed := pack_int8_weights(graph.source, start)):
                    log.info("%s: %d int8 weights packed as they ship", graph.source.name, packed)
                else:
                    log.info("%s: folding weights to fp32", graph.source.name)
                    fold_weights(graph.source, start)
                log.info("%s: quantizing (%s)", graph.name, method)
                quantize_graph(start, build / graph.name, method)
                start.unlink()
        for path in others:
            shutil.copy2(path, build / path.name)
        check = compare(source, transcripts(load(ModelSpec(spec.family, build)), clips), clips)
        report = {"method": method, "source": str(spec), "block_size": BLOCK_SIZE, **asdict(check)}
        if check.agreement < min_agreement:
            raise QuantizationRefused(
                f"the {method} model reproduces {check.agreement:.1%} of the source's tokens on "
                f"{check.clips} clips (required {min_agreement:.0%}); nothing written"
            )
        (build / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        build.rename(out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return check


def _cache_key(spec: ModelSpec, method: Method, graphs: Sequence[Graph]) -> str:
    import onnxruntime as ort

    identity = {
        "format": CACHE_FORMAT,
        "method": method,
        "block_size": BLOCK_SIZE,
        "onnxruntime": ort.__version__,
        "sources": {str(g.source): [g.source.stat().st_size, g.source.stat().st_mtime_ns] for g in graphs},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def ensure_quantized(
    spec: ModelSpec,
    method: Method,
    cache_dir: Path,
    load: Callable[[ModelSpec], AsrModel],
    min_agreement: float = MIN_AGREEMENT,
) -> Path | None:
    """``spec``'s model quantized by ``method`` in ``cache_dir``, built (and checked on the bundled
    sample) on first use; None if the check refused it. Safe for concurrent callers: the build runs
    under a file lock and is renamed into place only once it passed."""
    from filelock import FileLock

    graphs, _ = source_graphs(spec, cache_dir)
    entry = cache_dir / f"{spec.family}-{method}-{_cache_key(spec, method, graphs)}"
    if (entry / REPORT).is_file():
        return entry
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if (entry / REPORT).is_file():
            return entry
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry (no report: never completed)
        log.info("quantizing %s (%s) into %s; once, on first use", spec, method, entry)
        try:
            quantize(spec, entry, method, read_clips(default_clips()), load, cache_dir, min_agreement)
        except QuantizationRefused as exc:
            log.error("%s; serving the model as shipped", exc)
            return None
    return entry


def main(argv: Sequence[str]) -> None:
    import argparse

    from edge_agent.asr.registry import FAMILIES, parse_model_spec
    from edge_agent.settings import EdgeSettings

    settings = EdgeSettings()
    p = argparse.ArgumentParser(
        prog="edge-agent quantize",
        description="Write a quantized copy of an edge model to a new directory, checked against the "
        "source on speech; use it with EDGE_MODEL=family:OUT.",
    )
    p.add_argument("out", type=Path, help="the new model directory (must not exist)")
    p.add_argument("--model", default=settings.model, help="model to quantize (default: EDGE_MODEL)")
    p.add_argument("--method", choices=METHODS, default="w8", help="default: w8, the agent's own default")
    p.add_argument(
        "--audio",
        type=Path,
        nargs="+",
        default=None,
        help="speech to check on: audio files (X.txt beside X.wav is its reference) or JSONL "
        "manifests of audio_filepath/text (default: the agent's bundled sample)",
    )
    p.add_argument("--max-clips", type=int, default=40, help="check on at most this many clips")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT)
    args = p.parse_args(list(argv))
    # onnxruntime's quantizer logs every tensor it leaves alone: show only this module's progress.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        spec = parse_model_spec(args.model)
        clips = read_clips(args.audio or default_clips(), args.max_clips)
        check = quantize(
            spec,
            args.out,
            args.method,
            clips,
            # The source as shipped: not the copy the agent would quantize it into.
            lambda s: FAMILIES[s.family].load(s, settings.model_copy(update={"quantization": "none"})),
            Path(settings.model_cache_dir),
            args.min_agreement,
        )
    except (QuantizationRefused, FileExistsError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"edge-agent quantize: {exc}") from exc
    wer = (
        f"; WER {check.source_wer:.1%} -> {check.quantized_wer:.1%}"
        if check.source_wer is not None and check.quantized_wer is not None
        else ""
    )
    print(
        f"{args.out}: {args.method}, {check.agreement:.1%} of the source's tokens reproduced on "
        f"{check.clips} clips{wer}; use EDGE_MODEL={spec.family}:{args.out}"
    )
