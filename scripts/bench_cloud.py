"""Benchmark the cloud server as users run it: cold start, memory, RTF and WER, per model, same run.

Starts ``cloud-server`` as a subprocess for each model on loopback, sends every clip of the test
audio over gRPC (one request at a time), reads RSS from /proc, prints a table and writes the
"Cloud server" section of BENCHMARKS.md.

Usage: ``.venv/bin/python scripts/bench_cloud.py [--models base tiny.en] [--repeats 1]``
(build the audio first: ``.venv/bin/python scripts/build_test_audio.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr_common.protos import speech_pb2, speech_pb2_grpc  # noqa: E402
from speech_bench.markdown import replace_section  # noqa: E402
from speech_bench.services import free_port, wait_ready  # noqa: E402
from tests.speech import Clip, load_manifest, wer  # noqa: E402

SETS = ("pocketsphinx", "tts", "long")
MARK_BEGIN = "<!-- cloud-bench:begin -->"
MARK_END = "<!-- cloud-bench:end -->"
HEADER = "# Benchmarks\n\nFigures measured on this project's machines.\n"


@dataclass
class ModelFigures:
    model: str
    cold_start_s: float
    first_start_s: float
    rss_loaded_mb: float
    rss_peak_mb: float
    rtf: dict[str, float]
    wer: dict[str, float]
    audio_s: dict[str, float]


def _rss_mb(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def _start(model: str, cache: str, threads: int) -> tuple[subprocess.Popen[bytes], str, float]:
    rest, grpc_port = free_port(), free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLOUD_MODEL_CACHE_DIR": cache, "CLOUD_LOG_LEVEL": "WARNING"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "cloud-server"),
            "--host",
            "127.0.0.1",
            "--port",
            str(rest),
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
            "--model",
            model,
            "--cpu-threads",
            str(threads),
        ],
        env=env,
    )
    try:
        wait_ready(f"http://127.0.0.1:{rest}/ready", proc, timeout=300)
    except BaseException:
        proc.kill()
        raise
    return proc, f"127.0.0.1:{grpc_port}", time.monotonic() - started


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def bench_model(model: str, sets: dict[str, list[Clip]], threads: int, repeats: int) -> ModelFigures:
    with tempfile.TemporaryDirectory() as fresh:
        proc, _, first_start = _start(model, fresh, threads)  # includes assembling base from its parts
        _stop(proc)
        proc, target, cold = _start(model, fresh, threads)
    try:
        rss_loaded = _rss_mb(proc.pid, "VmRSS")
        rtf: dict[str, float] = {}
        wers: dict[str, float] = {}
        audio: dict[str, float] = {}
        with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            stub = speech_pb2_grpc.CloudRecognizerStub(channel)
            for name, clips in sets.items():
                ratios, hyps = [], []
                for _ in range(repeats):
                    spent, total, hyps = 0.0, 0.0, []
                    for clip in clips:
                        response = stub.Recognize(
                            speech_pb2.RecognizeRequest(
                                config=speech_pb2.RecognitionConfig(language="en"), audio=clip.pcm16()
                            ),
                            timeout=600,
                        )
                        spent += response.processing_seconds
                        total += response.audio_seconds
                        hyps.append(response.hypotheses[0].text if response.hypotheses else "")
                    ratios.append(spent / total)
                rtf[name] = statistics.median(ratios)
                wers[name] = wer([c.text for c in clips], hyps)
                audio[name] = sum(c.duration for c in clips)
        rss_peak = _rss_mb(proc.pid, "VmHWM")
    finally:
        _stop(proc)
    return ModelFigures(model, cold, first_start, rss_loaded, rss_peak, rtf, wers, audio)


def render(results: list[ModelFigures], threads: int, repeats: int, sets: dict[str, list[Clip]]) -> str:
    lines = [
        MARK_BEGIN,
        "## Cloud server",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; CTranslate2 int8, {threads} threads, 1 worker; "
        "gRPC `Recognize`, "
        f"one request at a time, language `en`, beam 5, n-best 1; RTF is the median of {repeats} pass(es) "
        "of server-side processing time over audio time.",
        "",
        "Sets: "
        + "; ".join(f"`{n}` {len(c)} clips, {sum(x.duration for x in c):.0f} s" for n, c in sets.items())
        + " (built by `scripts/build_test_audio.py`).",
        "",
        "| model | first start (assembles base) s | cold start s | RSS loaded MB | peak RSS MB | "
        + " | ".join(f"RTF {n}" for n in sets)
        + " | "
        + " | ".join(f"WER {n}" for n in sets)
        + " |",
        "|---|---|---|---|---|" + "---|" * (2 * len(sets)),
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.first_start_s:.1f} | {r.cold_start_s:.1f} | {r.rss_loaded_mb:.0f} | "
            f"{r.rss_peak_mb:.0f} | "
            + " | ".join(f"{r.rtf[n]:.3f}" for n in sets)
            + " | "
            + " | ".join(f"{100 * r.wer[n]:.1f}%" for n in sets)
            + " |"
        )
    lines += [
        "",
        "Cold start: process start until `GET /ready` answers 200. Reproduce: "
        "`.venv/bin/python scripts/bench_cloud.py`.",
        MARK_END,
    ]
    return "\n".join(lines)


def write_benchmarks(section: str) -> None:
    replace_section(ROOT / "BENCHMARKS.md", section, MARK_BEGIN, MARK_END, HEADER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["base", "tiny.en"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--audio", type=Path, default=ROOT / ".cache" / "test-audio")
    args = parser.parse_args()
    sets = {name: load_manifest(args.audio / name / "manifest.jsonl") for name in SETS}
    results = [bench_model(m, sets, args.threads, args.repeats) for m in args.models]
    section = render(results, args.threads, args.repeats, sets)
    print(section)
    write_benchmarks(section)


if __name__ == "__main__":
    main()
