"""Export a trained checkpoint as a NeMo-format streaming CTC model directory (sherpa-onnx layout).

    python -m training.conformer.export --train .cache/conformer-train \
        --out edge_agent/models/conformer-small

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

from training.conformer.model import (
    PRE_ENCODE,
    ConformerConfig,
    DecoderStep,
    JointStep,
    StreamingConformer,
    StreamingStep,
)

INPUTS = ["audio_signal", "length", "cache_last_channel", "cache_last_time", "cache_last_channel_len"]
OUTPUTS = ["logprobs", "encoded_lengths", "cache_last_channel_next", "cache_last_time_next",
           "cache_last_channel_next_len"]  # fmt: skip


def load_checkpoint(path: Path) -> StreamingConformer:
    state = torch.load(path, weights_only=False, map_location="cpu")
    raw = dict(state["config"])
    raw["chunk_sizes"] = tuple(raw["chunk_sizes"])
    model = StreamingConformer(ConformerConfig(**raw))
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
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


def metadata(cfg: ConformerConfig, chunk: int, transducer: bool = False) -> dict[str, str]:
    extra = {"pred_rnn_layers": "1", "pred_hidden": str(cfg.pred_hidden)} if transducer else {}
    return extra | {
        "model_type": "EncDecHybridRNNTCTCBPEModel" if transducer else "EncDecCTCModelBPE",
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


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def export_onnx(model: StreamingConformer, chunk: int, path: Path, head: str = "ctc") -> None:
    """The streaming step: with the CTC head (``model.onnx``) or the bare encoder (``encoder.onnx``)."""
    step = StreamingStep(model, chunk, head).eval()
    outputs = OUTPUTS if head == "ctc" else ["outputs", *OUTPUTS[1:]]
    torch.onnx.export(
        step,
        example_inputs(model.cfg, chunk),
        str(path),
        input_names=INPUTS,
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in INPUTS + outputs},
        opset_version=17,
        dynamo=False,
    )
    _set_metadata(path, metadata(model.cfg, chunk, transducer=head != "ctc"))


def export_transducer(model: StreamingConformer, chunk: int, out: Path) -> list[Path]:
    """sherpa-onnx's NeMo transducer layout: encoder.onnx, decoder.onnx, joiner.onnx (fp32)."""
    cfg = model.cfg
    export_onnx(model, chunk, out / "encoder.onnx", head="encoder")
    hidden = torch.zeros(1, 1, cfg.pred_hidden)
    primer = torch.tensor([[cfg.vocab_size]], dtype=torch.int32)
    torch.onnx.export(
        DecoderStep(model).eval(),
        (primer, torch.tensor([1], dtype=torch.int32), hidden, hidden),
        str(out / "decoder.onnx"),
        input_names=["targets", "target_length", "states.1", "onnx::LSTM_3"],
        output_names=["outputs", "prednet_lengths", "states", "74"],
        dynamic_axes={"targets": {0: "batch", 1: "tokens"}, "target_length": {0: "batch"},
                      "states.1": {1: "batch"}, "onnx::LSTM_3": {1: "batch"},
                      "outputs": {0: "batch", 2: "tokens"}, "prednet_lengths": {0: "batch"},
                      "states": {1: "batch"}, "74": {1: "batch"}},
        opset_version=17,
        dynamo=False,
    )  # fmt: skip
    torch.onnx.export(
        JointStep(model).eval(),
        (torch.randn(1, cfg.d_model, 1), torch.randn(1, cfg.pred_hidden, 1)),
        str(out / "joiner.onnx"),
        input_names=["encoder_outputs", "decoder_outputs"],
        output_names=["outputs"],
        dynamic_axes={"encoder_outputs": {0: "batch", 2: "frames"},
                      "decoder_outputs": {0: "batch", 2: "tokens"},
                      "outputs": {0: "batch", 1: "frames", 2: "tokens"}},
        opset_version=17,
        dynamo=False,
    )  # fmt: skip
    return [out / "encoder.onnx", out / "decoder.onnx", out / "joiner.onnx"]


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
    parser.add_argument("--no-transducer", action="store_true", help="CTC graph only")
    args = parser.parse_args(argv)
    # A training directory (checkpoint.pt) or a release (weights.pt: training/conformer/release)
    ckpt = args.train / "checkpoint.pt"
    model = load_checkpoint(ckpt if ckpt.exists() else args.train / "weights.pt")
    if args.chunk not in model.cfg.chunk_sizes:
        raise SystemExit(f"chunk {args.chunk} was not trained (trained: {model.cfg.chunk_sizes})")
    args.out.mkdir(parents=True, exist_ok=True)
    graphs = [args.out / "model.onnx"]
    export_onnx(model, args.chunk, graphs[0])
    if model.cfg.rnnt and not args.no_transducer:
        graphs += export_transducer(model, args.chunk, args.out)
    if not args.no_int8:
        for fp32 in graphs:
            quantize(fp32, fp32.with_suffix(".int8.onnx"))
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
