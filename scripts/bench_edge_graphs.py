"""Benchmark Moonshine's shipped ``.ort`` graphs against the rebuilt ONNX ones, in one run.

For each variant: session load time, encoder ms on 5 s and 10 s of audio, decoder ms per cached greedy
step (medians, 2 intra-op threads), and the process RSS. Prints only.

Timings come from one process that runs the variants in interleaved rounds (the machine is shared, so
load drifts); memory and load time from one fresh process per variant.

Usage: ``python scripts/bench_edge_graphs.py [--audio WAV] [--cache-dir DIR] [--repeats N]
[--with-optimized]``
(default audio: the long test clip from ``scripts/build_test_audio.py`` if built, else a synthetic signal).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.asr.moonshine.ort_convert import (  # noqa: E402
    DECODER_ORT,
    ENCODER_ORT,
    default_model_dir,
    ensure_onnx_models,
)

RATE = 16000
THREADS = 2
BOS_ID, EOS_ID = 1, 2
MAX_STEPS = 40
DEFAULT_AUDIO = ROOT / ".cache" / "test-audio" / "long" / "long.wav"


@dataclass
class Memory:
    load_ms: float
    rss_mb: float
    peak_rss_mb: float
    tokens: list[int]
    logits: np.ndarray = field(repr=False)


@dataclass
class Timing:
    encoder_ms: dict[float, list[float]] = field(default_factory=lambda: {5.0: [], 10.0: []})
    step_ms: list[float] = field(default_factory=list)


def _status_mb(key: str) -> float:
    """A memory figure from /proc/self/status (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Variant:
    """Encoder and decoder sessions for one pair of graph files."""

    def __init__(self, encoder: Path, decoder: Path) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        self.encoder = ort.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(decoder), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.decoder.get_outputs()]
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]

    def encode(self, audio: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        (hidden,) = self.encoder.run(None, {"input_values": audio[None, :]})
        return hidden, (time.perf_counter() - start) * 1000

    def greedy(self, hidden: np.ndarray) -> tuple[list[int], list[np.ndarray], list[float]]:
        """Greedy decode with the KV cache; returns tokens, last-position logits and cached-step times."""
        empty = np.zeros((1, 8, 0, 52), dtype=np.float32)
        feed = {
            "input_ids": np.array([[BOS_ID]], dtype=np.int64),
            "encoder_hidden_states": hidden,
            **{n: empty for n in self.past_names},
            "use_cache_branch": np.array([False]),
        }
        tokens: list[int] = []
        logits: list[np.ndarray] = []
        step_ms: list[float] = []
        cross: dict[str, np.ndarray] = {}
        for step in range(MAX_STEPS + 1):
            start = time.perf_counter()
            outputs = dict(zip(self.output_names, self.decoder.run(self.output_names, feed), strict=True))
            if step > 0:
                step_ms.append((time.perf_counter() - start) * 1000)
            logits.append(outputs["logits"][0, -1])
            token = int(np.argmax(outputs["logits"][0, -1]))
            tokens.append(token)
            if token == EOS_ID:
                break
            presents = {n: outputs[n.replace("past_key_values.", "present.")] for n in self.past_names}
            if step == 0:
                # The cached branch returns placeholder cross-attention presents: keep the first pass's.
                cross = {n: v for n, v in presents.items() if ".encoder." in n}
            feed = {
                "input_ids": np.array([[token]], dtype=np.int64),
                "encoder_hidden_states": hidden,
                **{n: v for n, v in presents.items() if ".decoder." in n},
                **cross,
                "use_cache_branch": np.array([True]),
            }
        return tokens, logits, step_ms


def _measure_memory(encoder: Path, decoder: Path, audio: np.ndarray) -> Memory:
    """Load one variant and decode the 10 s clip once, alone in a fresh process."""
    start = time.perf_counter()
    variant = _Variant(encoder, decoder)
    load_ms = (time.perf_counter() - start) * 1000
    hidden, _ = variant.encode(audio[: 10 * RATE])
    tokens, logits, _ = variant.greedy(hidden)
    return Memory(load_ms, _status_mb("VmRSS"), _status_mb("VmHWM"), tokens, np.stack(logits))


def _measure_speed(pairs: list[tuple[Path, Path]], audio: np.ndarray, repeats: int) -> list[Timing]:
    """Time all variants in one process, interleaved, so load from other users hits them alike."""
    variants = [_Variant(encoder, decoder) for encoder, decoder in pairs]
    timings = [Timing() for _ in variants]
    for repeat in range(repeats + 1):  # the first round is a warm-up
        for variant, timing in zip(variants, timings, strict=True):
            # Untimed: the previous variant's idle thread pools spin for a while and would slow this call.
            variant.encode(audio[: 5 * RATE])
            for seconds in (5.0, 10.0):
                hidden, ms = variant.encode(audio[: int(seconds * RATE)])
                if repeat:
                    timing.encoder_ms[seconds].append(ms)
            _, _, step_ms = variant.greedy(hidden)
            if repeat:
                timing.step_ms.extend(step_ms)
    return timings


def _save_optimized(source: Path, target: Path) -> None:
    """onnxruntime's optimized form of ``source`` (EXTENDED: level ALL would be CPU-specific)."""
    import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _load_audio(path: Path | None) -> tuple[np.ndarray, str]:
    if path is None and DEFAULT_AUDIO.is_file():
        path = DEFAULT_AUDIO
    if path is not None:
        import soundfile as sf

        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != RATE:
            raise SystemExit(f"{path}: expected {RATE} Hz audio, got {rate}")
        audio = audio[:, 0]
        if audio.size < 10 * RATE:
            raise SystemExit(f"{path}: need at least 10 s of audio")
        return np.ascontiguousarray(audio), str(path)
    t = np.arange(10 * RATE) / RATE
    signal = 0.3 * np.sin(2 * np.pi * (100 + 200 * t) * t) + 0.05 * np.random.default_rng(0).standard_normal(
        t.size
    )
    return signal.astype(np.float32), "synthetic sweep + noise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, help="16 kHz audio, at least 10 s")
    parser.add_argument(
        "--cache-dir", type=Path, help="where to build/reuse the rebuilt graphs (default: temp)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--with-optimized",
        action="store_true",
        help="also time onnxruntime's saved optimized form of the rebuilt graphs (folded fp32 weights)",
    )
    args = parser.parse_args()

    audio, audio_name = _load_audio(args.audio)
    source = default_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp) / "cache"
        start = time.perf_counter()
        files = ensure_onnx_models(source, cache_dir)
        build_s = time.perf_counter() - start
        variants = [
            ("original .ort", source / ENCODER_ORT, source / DECODER_ORT),
            ("rebuilt (cache)", files.encoder, files.decoder),
        ]
        if args.with_optimized:
            encoder, decoder = Path(tmp) / "encoder.opt.onnx", Path(tmp) / "decoder.opt.onnx"
            _save_optimized(files.encoder, encoder)
            _save_optimized(files.decoder, decoder)
            variants.append(("rebuilt, saved optimized", encoder, decoder))

        context = multiprocessing.get_context("spawn")
        pairs = [(encoder, decoder) for _, encoder, decoder in variants]
        memory = []
        for encoder, decoder in pairs:
            with context.Pool(1) as pool:
                memory.append(pool.apply(_measure_memory, (encoder, decoder, audio)))
        with context.Pool(1) as pool:
            timings = pool.apply(_measure_speed, (pairs, audio, args.repeats))
        sizes = [
            f"{name}: " + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in (enc, dec))
            for name, enc, dec in variants
        ]

    print(f"audio: {audio_name}; {THREADS} intra-op threads; {args.repeats} interleaved rounds")
    print(f"ensure_onnx_models: {build_s:.1f} s (0 if the cache was already built)")
    print("\n".join(sizes))
    print("times in ms: median (min); the min is the better guide when other processes share the CPU")
    print(
        f"{'variant':26} {'load':>6} {'encoder 5 s':>14} {'encoder 10 s':>14} "
        f"{'decoder/step':>13} {'steps':>5} {'RSS MB':>6} {'peak':>5}"
    )

    def cell(values: list[float], width: int) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f})".rjust(width)

    for (name, _, _), mem, timing in zip(variants, memory, timings, strict=True):
        print(
            f"{name:26} {mem.load_ms:6.0f} {cell(timing.encoder_ms[5.0], 14)} "
            f"{cell(timing.encoder_ms[10.0], 14)} {cell(timing.step_ms, 13)} {len(mem.tokens) - 1:5d} "
            f"{mem.rss_mb:6.0f} {mem.peak_rss_mb:5.0f}"
        )
    reference = memory[0]
    for (name, _, _), mem in zip(variants[1:], memory[1:], strict=True):
        line = f"{name}: greedy tokens {'identical' if mem.tokens == reference.tokens else 'DIFFER'}"
        if mem.logits.shape == reference.logits.shape:
            diff = float(np.max(np.abs(mem.logits - reference.logits)))
            line += f"; max abs logit diff over {len(mem.tokens)} steps {diff:.2g}"
        print(line)


if __name__ == "__main__":
    main()
