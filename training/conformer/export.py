"""Export a trained checkpoint as a NeMo-format streaming CTC model directory (sherpa-onnx layout).

    python -m training.conformer.export --train .cache/conformer-train \
        --out edge_agent/models/conformer-ctc-small

Writes ``model.onnx`` (fp32) and/or ``model.int8.onnx`` (dynamic int8, per channel) with NeMo's input and
output names, the sherpa-onnx metadata keys (``window_size``, ``chunk_shift``, ``subsampling_factor``,
``vocab_size``, ``cache_last_*_dim1..3``, ``normalize_type``), and ``tokens.txt`` (``<piece> <id>``,
``<blk>`` last). One export has one chunk size (its look-ahead is ``chunk - 1`` encoder frames).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import onnx
import sentencepiece as spm
import torch

from training.conformer.model import PRE_ENCODE, ConformerConfig, StreamingConformer, StreamingStep

INPUTS = ["audio_signal", "length", "cache_last_channel", "cache_last_time", "cache_last_channel_len"]
OUTPUTS = ["logprobs", "encoded_lengths", "cache_last_channel_next", "cache_last_time_next",
           "cache_last_channel_next_len"]  # fmt: skip


def load_checkpoint(path: Path) -> StreamingConformer:
    state = torch.load(path, weights_only=False, map_location="cpu")
    raw = dict(state["config"])
    raw["chunk_sizes"] = tuple(raw["chunk_sizes"])
    model = StreamingConformer(ConformerConfig(**raw))
    model.load_state_dict(state["model"])
    return model.eval()


def example_inputs(cfg: ConformerConfig, chunk: int) -> tuple[torch.Tensor, ...]:
    window = 8 * chunk + PRE_ENCODE
    return (
        torch.randn(1, cfg.n_mels, window),
        torch.tensor([window], dtype=torch.int64),
        torch.zeros(1, cfg.n_layers, cfg.left_context, cfg.d_model),
        torch.zeros(1, cfg.n_layers, cfg.d_model, cfg.conv_kernel - 1),
        torch.zeros(1, dtype=torch.int64),
    )


def metadata(cfg: ConformerConfig, chunk: int) -> dict[str, str]:
    return {
        "model_type": "EncDecCTCModelBPE",
        "version": "1",
        "model_author": "edge-cloud-asr",
        "comment": "cache-aware streaming FastConformer CTC trained on synthetic speech (training/conformer)",
        "vocab_size": str(cfg.vocab_size),
        "window_size": str(8 * chunk + PRE_ENCODE),
        "chunk_shift": str(8 * chunk),
        "subsampling_factor": "8",
        "feat_dim": str(cfg.n_mels),
        "normalize_type": "",
        "cache_last_channel_dim1": str(cfg.n_layers),
        "cache_last_channel_dim2": str(cfg.left_context),
        "cache_last_channel_dim3": str(cfg.d_model),
        "cache_last_time_dim1": str(cfg.n_layers),
        "cache_last_time_dim2": str(cfg.d_model),
        "cache_last_time_dim3": str(cfg.conv_kernel - 1),
    }


def export_onnx(model: StreamingConformer, chunk: int, path: Path) -> None:
    step = StreamingStep(model, chunk).eval()
    batch = {"0": "batch"}
    torch.onnx.export(
        step,
        example_inputs(model.cfg, chunk),
        str(path),
        input_names=INPUTS,
        output_names=OUTPUTS,
        dynamic_axes={name: {0: "batch"} for name in INPUTS + OUTPUTS} if batch else None,
        opset_version=17,
        dynamo=False,
    )
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in metadata(model.cfg, chunk).items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def write_tokens(sp: spm.SentencePieceProcessor, path: Path) -> None:
    lines = [f"{sp.id_to_piece(i)} {i}" for i in range(sp.get_piece_size())]
    lines.append(f"<blk> {sp.get_piece_size()}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    # quantize_dynamic keeps metadata_props on recent onnxruntime; make sure.
    source, out = onnx.load(str(src)), onnx.load(str(dst))
    if not out.metadata_props:
        for prop in source.metadata_props:
            out.metadata_props.add(key=prop.key, value=prop.value)
        onnx.save(out, str(dst))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=Path(".cache/conformer-train"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chunk", type=int, default=4, help="encoder frames per step (80 ms each)")
    parser.add_argument("--keep-fp32", action="store_true")
    parser.add_argument("--no-int8", action="store_true")
    args = parser.parse_args(argv)
    model = load_checkpoint(args.train / "checkpoint.pt")
    if args.chunk not in model.cfg.chunk_sizes:
        raise SystemExit(f"chunk {args.chunk} was not trained (trained: {model.cfg.chunk_sizes})")
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / "model.onnx"
    export_onnx(model, args.chunk, fp32)
    if not args.no_int8:
        quantize(fp32, args.out / "model.int8.onnx")
        if not args.keep_fp32:
            fp32.unlink()
    write_tokens(
        spm.SentencePieceProcessor(model_file=str(args.train / "tokenizer.model")), args.out / "tokens.txt"
    )
    (args.out / "training.json").write_text(
        json.dumps({"config": model.cfg.to_dict(), "chunk": args.chunk}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
