"""Dev check: the exported streaming graph, run chunk by chunk with its caches by the edge's own runtime,
equals the torch model's full-context forward under the same attention limits, for every chunk size and
both heads (CTC log-probs; the encoder outputs the transducer's joint reads).

    python -m training.conformer.check_equivalence --train .cache/conformer-train AUDIO.wav ...

For each trained chunk size: export fp32 ONNX to a temporary directory, load it with
``edge_agent.asr.conformer.onnx_model.NemoStreamingModel``, step it over the utterance's features (padded with
silence frames to whole windows, as the stream's final is), and compare the log-probabilities with
``StreamingConformer.forward`` on the same features. Exits non-zero past ``--tolerance``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from edge_agent.asr.conformer.features import LOG_GUARD, log_mel
from edge_agent.asr.conformer.onnx_model import NemoStreamingModel
from training.conformer.export import export_onnx, export_transducer, load_checkpoint
from training.conformer.model import PRE_ENCODE, ConformerConfig, StreamingConformer


def _features(path: Path) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return log_mel(soxr.resample(mono, rate, 16000) if rate != 16000 else mono)


def max_difference(
    model: StreamingConformer, chunk: int, feats: np.ndarray, workdir: Path, head: str = "ctc"
) -> float:
    """Largest |streamed - full| over the utterance: CTC log-probs, or (``head="rnnt"``) the encoder
    outputs the transducer's joint reads."""
    directory = workdir / f"chunk{chunk}-{head}"
    directory.mkdir()
    if head == "ctc":
        export_onnx(model, chunk, directory / "model.onnx")
    else:
        export_transducer(model, chunk, directory)
    vocab = [f"t{i} {i}" for i in range(model.cfg.vocab_size)] + [f"<blk> {model.cfg.vocab_size}"]
    (directory / "tokens.txt").write_text("\n".join(vocab) + "\n")
    runtime = NemoStreamingModel(directory, threads=2, head="ctc" if head == "ctc" else "rnnt")
    shift = 8 * chunk
    steps = max(1, math.ceil((feats.shape[1] - PRE_ENCODE) / shift))
    total = steps * shift + PRE_ENCODE
    padded = np.concatenate(
        [feats, np.full((feats.shape[0], total - feats.shape[1]), math.log(LOG_GUARD), np.float32)], axis=1
    )
    state = runtime.initial_state()
    streamed = []
    for k in range(steps):
        logprobs, state = runtime.step(padded[:, k * shift : k * shift + shift + PRE_ENCODE], state)
        streamed.append(logprobs)
    with torch.no_grad():
        if head == "ctc":
            full, _ = model(torch.from_numpy(padded)[None], torch.tensor([total]), chunk)
        else:
            full, _ = model.encode(torch.from_numpy(padded)[None], torch.tensor([total]), chunk)
    stream = np.concatenate(streamed)
    reference = full[0].numpy()[: len(stream)]
    return float(np.abs(stream - reference).max())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="+", type=Path)
    parser.add_argument("--train", type=Path, help="training directory (default: random weights)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = (
        load_checkpoint(args.train / "checkpoint.pt")
        if args.train
        else StreamingConformer(ConformerConfig()).eval()
    )
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for head in ("ctc", "rnnt") if model.cfg.rnnt else ("ctc",):
            what = "CTC log-probs" if head == "ctc" else "encoder outputs (transducer)"
            for chunk in model.cfg.chunk_sizes:
                diffs = []
                for i, path in enumerate(args.audio):
                    workdir = Path(tmp) / f"{chunk}-{i}"
                    workdir.mkdir(exist_ok=True)
                    diffs.append(max_difference(model, chunk, _features(path), workdir, head))
                worst = max(worst, *diffs)
                print(f"{what}, chunk {chunk} ({chunk * 80} ms, look-ahead {(chunk - 1) * 80} ms): "
                      f"max |streamed - full| = {max(diffs):.2e} over {len(diffs)} utterances")  # fmt: skip
    if worst > args.tolerance:
        sys.exit(f"FAIL: {worst:.2e} > {args.tolerance:.0e}")
    print(f"OK: every setting within {args.tolerance:.0e}")


if __name__ == "__main__":
    main()
