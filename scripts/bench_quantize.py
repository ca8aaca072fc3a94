"""Quantized edge models side by side: size, memory, speed and accuracy, one run per row on the same audio.

For Moonshine base and the bundled conformer: *fp32* (the shipped weights folded to fp32 and saved: what
the agent holds in memory today; the conformer's fp32 export of its released weights), the *shipped* int8
graphs (what the agent loads today), and
``edge-agent quantize``'s int8 (dynamic), w8 (8-bit weight-only MatMul) and int4 (4-bit weight-only
MatMul). Each row runs in a fresh process, one after the other: load; RSS idle; encoder ms on 5 s and
10 s of speech (median of 3); decoder ms per token (median over a greedy decode); then every clip of the
clean ``tts`` and the ``noisy`` bench sets (WER after Whisper's English normalizer; RTF = decode time /
audio time on the clean set); RSS peak at the end. Moonshine's encoder runs on the whole clip; the
conformer's runs chunk by chunk as audio arrives (its figure is the time to ingest the clip), and its
decoder step is one prediction-net plus joint call of the transducer head.

Usage: ``python scripts/bench_quantize.py [--families moonshine conformer] [--benchmarks-md BENCHMARKS.md]``
(quantized models are written once to ``.cache/quantized/``; needs the bench sets of
``scripts/build_bench_sets.py --sets tts noisy``, and for the conformer's fp32 export the dev-only
``pip install torch==2.13.0 sentencepiece``).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speech_bench.markdown import replace_section  # noqa: E402

RATE = 16000
SETS = ROOT / ".cache" / "bench-sets"
OUT = ROOT / ".cache" / "quantized"
RELEASE = ROOT / "training" / "conformer" / "release"
VARIANTS = ("fp32", "shipped", "int8", "w8", "int4")
BEGIN, END = "<!-- quantize-bench:begin -->", "<!-- quantize-bench:end -->"
MAX_STEPS = 40


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _clips(manifest: Path) -> list[tuple[np.ndarray, str]]:
    import soundfile as sf

    out = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        audio, rate = sf.read(str(manifest.parent / row["audio_filepath"]), dtype="float32")
        assert rate == RATE, manifest
        out.append((np.ascontiguousarray(audio), str(row["text"])))
    return out


def _speech(seconds: float, clips: Sequence[tuple[np.ndarray, str]]) -> np.ndarray:
    """``seconds`` of speech: bench clips joined end to end."""
    joined = np.concatenate([audio for audio, _ in clips])
    return joined[: int(seconds * RATE)]


def _encoder_ms(rec: Any, family: str, audio: np.ndarray) -> float:
    start = time.perf_counter()
    if family == "moonshine":
        rec.model.encode(audio)
    else:
        stream = rec.create_stream()
        stream.accept(audio)
        stream.advance(lambda: False)  # the encoder steps over every complete chunk
    return (time.perf_counter() - start) * 1000


def _step_ms(rec: Any, family: str, audio: np.ndarray) -> float | None:
    times: list[float] = []
    if family == "moonshine":
        model = rec.model
        encoded = model.encode(audio)
        logprobs, cache = model.prefill(encoded, [1])
        for _ in range(MAX_STEPS):
            token = int(np.argmax(logprobs))
            if token == 2:
                break
            start = time.perf_counter()
            logprobs, cache = model.step(encoded, cache, token)
            times.append((time.perf_counter() - start) * 1000)
    else:
        onnx = rec.onnx
        if onnx.head == "ctc":
            return None  # the CTC head runs inside the encoder graph: no decoder step to time
        frame = np.zeros((1, onnx.joiner.get_inputs()[0].shape[1]), np.float32)
        state = None
        for token in range(1, MAX_STEPS + 1):
            start = time.perf_counter()
            out, state = onnx.predict(token, state)
            onnx.joint(frame, out)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times) if times else None


def measure(spec: str, family: str, clean: Path, noisy: Path) -> dict[str, Any]:
    """One row, in a fresh process."""
    from edge_agent.asr.registry import FAMILIES, parse_model_spec
    from edge_agent.settings import EdgeSettings
    from speech_bench.scoring import errors

    parsed = parse_model_spec(spec)
    start = time.perf_counter()
    # "none": the shipped row is the shipped graphs; a model directory is served as it is anyway.
    rec: Any = FAMILIES[parsed.family].load(parsed, EdgeSettings(quantization="none"))
    load_s = time.perf_counter() - start
    idle = _status_mb("VmRSS")
    clean_clips, noisy_clips = _clips(clean), _clips(noisy)
    encoder = {
        s: statistics.median(_encoder_ms(rec, family, _speech(s, clean_clips)) for _ in range(3))
        for s in (5.0, 10.0)
    }
    step = _step_ms(rec, family, _speech(5.0, clean_clips))
    wer: dict[str, float] = {}
    per_clip: dict[str, list[tuple[int, int]]] = {}
    decode_s = audio_s = 0.0
    for name, clips in (("clean", clean_clips), ("noisy", noisy_clips)):
        counts = per_clip[name] = []
        for audio, text in clips:
            start = time.perf_counter()
            stream = rec.create_stream()
            stream.accept(audio)
            hyp = stream.finalize().text
            if name == "clean":
                decode_s += time.perf_counter() - start
                audio_s += len(audio) / RATE
            counts.append(errors(text, hyp))
        wer[name] = sum(e for e, _ in counts) / max(1, sum(n for _, n in counts))
    return {
        "spec": spec,
        "load_s": load_s,
        "rss_idle_mb": idle,
        "rss_peak_mb": _status_mb("VmHWM"),
        "encoder_ms": {str(k): v for k, v in encoder.items()},
        "step_ms": step,
        "rtf": decode_s / audio_s,
        "wer": wer,
        "errors": per_clip,
        "clips": {"clean": len(clean_clips), "noisy": len(noisy_clips)},
    }


def wer_change(
    row: dict[str, Any], base: dict[str, Any], name: str, draws: int = 2000
) -> tuple[float, float, float]:
    """WER points of ``row`` minus ``base`` on set ``name``, with a 95 % paired bootstrap interval
    (clips resampled with replacement, the same clips for both): greedy decoding of noisy speech flips
    a few clips into runaway insertions, so a difference needs its spread beside it."""
    a, b = np.asarray(row["errors"][name], float), np.asarray(base["errors"][name], float)
    words = a[:, 1]
    diff = lambda idx: 100 * (a[idx, 0].sum() - b[idx, 0].sum()) / max(1.0, words[idx].sum())  # noqa: E731
    rng = np.random.default_rng(0)
    draws_ = [diff(rng.integers(0, len(a), len(a))) for _ in range(draws)]
    return diff(np.arange(len(a))), float(np.percentile(draws_, 2.5)), float(np.percentile(draws_, 97.5))


def speed(family: str, specs: Sequence[str], clean: Path, rounds: int) -> list[dict[str, Any]]:
    """Encoder and decoder-step times of every variant of a family, loaded side by side in one process
    and timed in interleaved rounds (medians over rounds), so that other load on the machine hits them
    alike; the per-row process measures memory and accuracy."""
    from edge_agent.asr.registry import FAMILIES, parse_model_spec
    from edge_agent.settings import EdgeSettings

    settings = EdgeSettings(quantization="none")
    models = [FAMILIES[family].load(parse_model_spec(spec), settings) for spec in specs]
    clips = _clips(clean)
    audio = {s: _speech(s, clips) for s in (5.0, 10.0)}
    times: list[dict[str, list[float]]] = [{"5.0": [], "10.0": [], "step": []} for _ in models]
    for round_ in range(rounds + 1):  # round 0 warms up
        for rec, figures in zip(models, times, strict=True):
            _encoder_ms(rec, family, audio[5.0])  # untimed: the previous model's idle threads spin
            for seconds, clip in audio.items():
                ms = _encoder_ms(rec, family, clip)
                if round_:
                    figures[str(seconds)].append(ms)
            step = _step_ms(rec, family, audio[5.0])
            if round_ and step is not None:
                figures["step"].append(step)
    return [
        {
            "encoder_ms": {k: statistics.median(f[k]) for k in ("5.0", "10.0")},
            "step_ms": statistics.median(f["step"]) if f["step"] else None,
        }
        for f in times
    ]


def _speed(args: tuple[str, list[str], Path, int]) -> list[dict[str, Any]]:
    return speed(*args)


def graph_mb(family: str, variant: str, directory: Path | None) -> float:
    """Size on disk of the graphs a variant loads (the tokenizer and tables are the same for all)."""
    if variant == "shipped":
        if family == "moonshine":
            from edge_agent.asr.moonshine.ort_convert import default_model_dir

            files = list(default_model_dir().glob("*.ort"))
        else:
            from edge_agent.asr.conformer.stream import BUNDLED

            files = list(BUNDLED.glob("*.onnx"))
    else:
        assert directory is not None
        files = list(directory.glob("*.onnx"))
    return sum(f.stat().st_size for f in files) / 1e6


def prepare(family: str, variant: str, check_audio: list[Path]) -> Path | None:
    """The model directory of a variant (None: the shipped model), built once."""
    from edge_agent.asr.registry import FAMILIES, ModelSpec
    from edge_agent.quantize import fold_weights, quantize, read_clips, source_graphs
    from edge_agent.settings import EdgeSettings

    if variant == "shipped":
        return None
    logging.getLogger().setLevel(logging.WARNING)  # the quantizer logs every tensor it leaves alone
    settings = EdgeSettings(quantization="none")  # the source is the shipped model
    target = OUT / f"{family}-{variant}"
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    # Moonshine's source is the shipped model (its int8 weights folded to fp32); the conformer's is
    # its fp32 export from the released weights (the bundled graphs are int8 operators already).
    spec = ModelSpec(family) if family == "moonshine" else ModelSpec(family, OUT / "conformer-fp32")
    if variant == "fp32" and family == "conformer":
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.conformer.export",
                "--train",
                str(RELEASE),
                "--out",
                str(target),
                "--no-int8",
            ],
            check=True,
            cwd=ROOT,
        )
    elif variant == "fp32":
        graphs, others = source_graphs(spec, Path(settings.model_cache_dir))
        target.mkdir(parents=True)
        for graph in graphs:
            fold_weights(graph.source, target / graph.name)
        for path in others:
            shutil.copy2(path, target / path.name)
    else:
        clips = read_clips(check_audio, 40)
        quantize(
            spec,
            target,
            variant,  # type: ignore[arg-type]
            clips,
            lambda s: FAMILIES[s.family].load(s, settings),
            Path(settings.model_cache_dir),
            min_agreement=0.0,  # every method gets its row, whatever the gate would say
        )
    (target / ".complete").write_text("")
    return target


def _row(args: tuple[str, str, Path, Path]) -> dict[str, Any]:
    return measure(*args)


def render(rows: list[dict[str, Any]], started: str, rounds: int, load: float) -> str:
    lines = [
        BEGIN,
        "## Quantized edge models: size, memory, speed, accuracy",
        "",
        f"`scripts/bench_quantize.py`, run {started} on {platform.machine()} (2 cores; 1-minute load average "
        f"{load:.1f} at the start; one fresh process per row, rows one after another, 2 intra-op "
        "threads). *fp32*: Moonshine's "
        "shipped weights folded to fp32 and saved (what the agent holds in memory today), the conformer "
        "exported in fp32 from its released weights (`training/conformer/export.py --no-int8`); the "
        "quantized rows start from these; *shipped*: the int8 "
        "graphs the agent loads today (Moonshine's `.ort` files, rebuilt; the bundled conformer's "
        "`.int8.onnx`); *int8*: `edge-agent quantize --method int8` (dynamic: int8 weights per channel, "
        "activations quantized per call); *w8*: `--method w8` (8-bit weight-only MatMulNBits, blocks of "
        "32); *int4*: `--method int4` (4-bit weight-only MatMulNBits, blocks of 32). Every quantized "
        "variant keeps the token embedding as int8 rows. Size: the graph files. RSS: the process after "
        "loading (idle) and its peak after decoding every clip (the clips held in memory, ~75 MB). Encoder: "
        "Moonshine on 5 s / 10 s of speech at once, the conformer ingesting it chunk by chunk; decoder: one "
        "greedy step (Moonshine) or one prediction-net + joint call (the conformer's transducer head); "
        f"both timed with a family's variants loaded side by side in one process, medians of {rounds} "
        "interleaved rounds. RTF over the clean set. "
        "WER after Whisper's English normalizer on the `tts` bench set (clean) and the `noisy` set. "
        "Agreement: the share of the source model's tokens the quantized one reproduces on the check "
        "clips `edge-agent quantize` decodes (the gate refuses below 85 %).",
        "",
        "| model | variant | size MB | RSS idle / peak MB | encoder ms 5 s / 10 s | decoder ms/token "
        "| RTF | WER clean (vs fp32, 95 % CI) | WER noisy (vs fp32, 95 % CI) | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32 = {r["family"]: r for r in rows if r["variant"] == "fp32"}
    for r in rows:
        wers = []
        for name in ("clean", "noisy"):
            text = f"{r['wer'][name]:.1%}"
            base = fp32.get(r["family"])
            if base is not None and base is not r:
                d, lo, hi = wer_change(r, base, name)
                text += f" ({d:+.1f}, {lo:+.1f} to {hi:+.1f})"
            wers.append(text)
        step = "-" if r["step_ms"] is None else f"{r['step_ms']:.2f}"
        agreement = "-" if r.get("agreement") is None else f"{r['agreement']:.1%}"
        lines.append(
            f"| {r['family']} | {r['variant']} | {r['size_mb']:.1f} | {r['rss_idle_mb']:.0f} / "
            f"{r['rss_peak_mb']:.0f} | {r['encoder_ms']['5.0']:.0f} / {r['encoder_ms']['10.0']:.0f} | "
            f"{step} | {r['rtf']:.3f} | {wers[0]} | {wers[1]} | {agreement} |"
        )
    clips = rows[0]["clips"]
    lines += [
        "",
        f"Audio: {clips['clean']} clean and {clips['noisy']} noisy clips. Reproduce: "
        "`.venv/bin/python scripts/build_bench_sets.py --sets tts noisy && "
        ".venv/bin/python scripts/bench_quantize.py --benchmarks-md BENCHMARKS.md`.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--families", nargs="+", choices=["moonshine", "conformer"], default=["moonshine", "conformer"]
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--sets", type=Path, default=SETS, help="bench sets directory")
    parser.add_argument("--out", type=Path, default=OUT / "report.json")
    parser.add_argument("--benchmarks-md", type=Path)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument(
        "--timing-only", action="store_true", help="keep the last report's rows, time the variants again"
    )
    args = parser.parse_args()
    clean, noisy = args.sets / "tts" / "manifest.jsonl", args.sets / "noisy" / "manifest.jsonl"
    for manifest in (clean, noisy):
        if not manifest.is_file():
            raise SystemExit(f"{manifest} missing: python scripts/build_bench_sets.py --sets tts noisy")
    # The gate's check clips: the agent's sample and the test clips, none of them in the bench sets.
    check_audio = [
        ROOT / "edge_agent" / "samples" / "demo.flac",
        ROOT / ".cache" / "test-audio" / "tts" / "manifest.jsonl",
    ]
    started = time.strftime("%Y-%m-%d")
    load = os.getloadavg()[0]
    rows = []
    spawn = multiprocessing.get_context("spawn")
    if args.timing_only:
        # Memory and accuracy from the last report; only the interleaved timings again (a quieter machine).
        rows = json.loads(args.out.read_text())
        for family in args.families:
            family_rows = [r for r in rows if r["family"] == family]
            with spawn.Pool(1) as pool:
                timed = pool.apply(_speed, ((family, [r["spec"] for r in family_rows], clean, args.rounds),))
            for row, figures in zip(family_rows, timed, strict=True):
                row.update(figures)
                print(family, row["variant"], figures, flush=True)
        args.families = []
    for family in args.families:
        family_rows = []
        for variant in args.variants:
            directory = prepare(family, variant, [p for p in check_audio if p.exists()])
            spec = family if directory is None else f"{family}:{directory}"
            with spawn.Pool(1) as pool:
                row = pool.apply(_row, ((spec, family, clean, noisy),))
            row.update(family=family, variant=variant, size_mb=graph_mb(family, variant, directory))
            report = directory / "quantization.json" if directory is not None else None
            row["agreement"] = (
                json.loads(report.read_text())["agreement"] if report and report.is_file() else None
            )
            family_rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "errors"}), flush=True)
        with spawn.Pool(1) as pool:
            timed = pool.apply(_speed, ((family, [r["spec"] for r in family_rows], clean, args.rounds),))
        for row, figures in zip(family_rows, timed, strict=True):
            row.update(figures)
            print(row["variant"], figures, flush=True)
        rows += family_rows
    if args.out.is_file():
        # Rows of a family or variant not run this time come from the previous run's report.
        done = {(r["family"], r["variant"]) for r in rows}
        earlier = [r for r in json.loads(args.out.read_text()) if (r["family"], r["variant"]) not in done]
        order = {
            (f, v): i for i, (f, v) in enumerate((f, v) for f in ("moonshine", "conformer") for v in VARIANTS)
        }
        rows = sorted(rows + earlier, key=lambda r: order[(r["family"], r["variant"])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    section = render(rows, started, args.rounds, load)
    print(section)
    if args.benchmarks_md is not None:
        replace_section(args.benchmarks_md, section, BEGIN, END)


if __name__ == "__main__":
    main()
