"""Benchmark the edge agent as users run it, every mode in the same run, and write BENCHMARKS.md.

Starts ``cloud-server`` (Whisper base) and ``edge-agent`` processes on loopback and streams a labelled
set through the edge's WebSocket, one utterance per connection, each padded with silence:

* ``pilot``: pilot inference on, default calibrated escalation (the hybrid), streamed in real time;
* ``plain``: no pilot, no speculative decode, no cloud (ingest, then decode after the endpoint), real time;
* ``cloud``: escalation threshold 0, so every utterance goes to the cloud (for cloud-only WER).

Figures: final latency after end of speech (audio timeline; includes the VAD's silence wait) and
finalization latency (endpoint to final: compute) p50/p95, edge RTF, RSS, and WER/offload for edge-only
(the edge's own text), cloud-only and hybrid (the text the edge chose).

Usage: ``.venv/bin/python scripts/bench_edge.py [--limit N]`` after building the test audio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.stream_client import stream_file  # noqa: E402
from tests.speech import Clip, load_manifest, wer  # noqa: E402

MARK_BEGIN, MARK_END = "<!-- edge-bench:begin -->", "<!-- edge-bench:end -->"
RATE = 16000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready")


def _rss_mb(pid: int, field: str = "VmHWM") -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def build_set(out: Path) -> list[Clip]:
    """Clean real + synthetic clips and white-noise copies of the synthetic ones (0 and 5 dB SNR)."""
    audio_dir = ROOT / ".cache" / "test-audio"
    clean = load_manifest(audio_dir / "pocketsphinx" / "manifest.jsonl") + load_manifest(
        audio_dir / "tts" / "manifest.jsonl"
    )
    clips = list(clean)
    rng = np.random.default_rng(11)
    for clip in load_manifest(audio_dir / "tts" / "manifest.jsonl"):
        audio = clip.samples()
        for snr in (5.0, 0.0):
            noise = rng.normal(size=len(audio)).astype(np.float32)
            noisy = audio + noise * np.sqrt(np.mean(audio**2) / (np.mean(noise**2) * 10 ** (snr / 10)))
            path = out / f"{clip.path.stem}_snr{int(snr)}.wav"
            sf.write(path, noisy / max(1.0, float(np.abs(noisy).max()) / 0.95), RATE, subtype="PCM_16")
            clips.append(Clip(path, clip.text, clip.duration, f"noisy{int(snr)}"))
    padded = []
    for clip in clips:
        audio = np.concatenate([np.zeros(RATE // 2, np.float32), clip.samples(), np.zeros(RATE, np.float32)])
        path = out / f"padded_{clip.path.stem}.wav"
        sf.write(path, audio, RATE, subtype="PCM_16")
        padded.append(Clip(path, clip.text, clip.duration, clip.kind))
    return padded


def run_mode(clips: list[Clip], edge_args: list[str], speed: float, cloud_grpc: int | None) -> dict[str, Any]:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGE_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        target = f"127.0.0.1:{cloud_grpc}" if cloud_grpc else ""
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-agent"), "--host", "127.0.0.1", "--port", str(port),
             "--cloud-target", target, "--queue-path", f"{tmp}/q.sqlite3", *edge_args],
            env=env,
        )  # fmt: skip
        try:
            _wait(f"http://127.0.0.1:{port}/health", proc)
            rss_idle = _rss_mb(proc.pid, "VmRSS")
            finals: list[dict[str, Any]] = []
            for clip in clips:
                events = asyncio.run(
                    stream_file(f"ws://127.0.0.1:{port}/v1/stream", clip.path, speed, show=False)
                )
                utterance = [e for e in events if e["type"] == "final"]
                finals.append(
                    {
                        "reference": clip.text,
                        "kind": clip.kind,
                        "duration": clip.duration,
                        "text": " ".join(e["text"] for e in utterance),
                        "edge_text": " ".join(e["edge_text"] for e in utterance),
                        "cloud_text": " ".join(e["cloud_text"] or "" for e in utterance),
                        "escalated": any(e["escalated"] for e in utterance),
                        "latency_ms": [e["latency_ms"] for e in utterance],
                        "finalize_ms": [e["finalize_ms"] for e in utterance],
                    }
                )
            rss_peak = _rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return {"finals": finals, "rss_idle_mb": rss_idle, "rss_peak_mb": rss_peak}


def edge_rtf(clips: list[Clip]) -> float:
    from edge_agent.asr.decoding import greedy_decode
    from edge_agent.recognizer import load_model
    from edge_agent.settings import EdgeSettings

    model = load_model(EdgeSettings())
    spent = audio = 0.0
    for clip in clips:
        samples = clip.samples()
        started = time.perf_counter()
        greedy_decode(model, model.encode(samples))
        spent += time.perf_counter() - started
        audio += len(samples) / RATE
    return spent / audio


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N clips")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clips = build_set(Path(tmp))
        if args.limit:
            clips = clips[: args.limit]
        rest, grpc_port = _free_port(), _free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLOUD_LOG_LEVEL": "WARNING"}
        cloud = subprocess.Popen(
            [str(Path(sys.executable).parent / "cloud-server"), "--host", "127.0.0.1", "--port", str(rest),
             "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port)],
            env=env,
        )  # fmt: skip
        try:
            _wait(f"http://127.0.0.1:{rest}/ready", cloud)
            pilot = run_mode(clips, [], 1.0, grpc_port)
            plain = run_mode(clips, ["--no-pilot", "--no-speculative"], 1.0, None)
            cloud_all = run_mode(clips, ["--escalation-threshold", "0"], 4.0, grpc_port)
        finally:
            cloud.send_signal(signal.SIGTERM)
            cloud.wait(30)
        rtf = edge_rtf([Clip(c.path, c.text, c.duration, c.kind) for c in clips])
    refs = [f["reference"] for f in pilot["finals"]]
    figures = {
        "utterances": len(clips),
        "edge_wer": wer(refs, [f["edge_text"] for f in pilot["finals"]]),
        "cloud_wer": wer(refs, [f["cloud_text"] for f in cloud_all["finals"]]),
        "hybrid_wer": wer(refs, [f["text"] for f in pilot["finals"]]),
        "offload": float(np.mean([f["escalated"] for f in pilot["finals"]])),
        "edge_rtf": rtf,
    }
    latency = {}
    for name, run in (("pilot (hybrid)", pilot), ("plain (decode after endpoint, edge only)", plain)):
        lat = [x for f in run["finals"] for x in f["latency_ms"]]
        fin = [x for f in run["finals"] for x in f["finalize_ms"]]
        latency[name] = (_pct(lat, 50), _pct(lat, 95), _pct(fin, 50), _pct(fin, 95), run["rss_peak_mb"])
    kept = [f for f in pilot["finals"] if not f["escalated"]]
    kept_fin = [x for f in kept for x in f["finalize_ms"]]
    section = [
        MARK_BEGIN,
        "## Edge agent",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores; "
        "Moonshine base (rebuilt ONNX graphs), onnxruntime 2 threads; cloud Whisper base int8 2 threads "
        f"on the same machine. {len(clips)} utterances streamed one per WebSocket connection, each padded "
        "with 0.5 s / 1 s of silence: the pocketsphinx recordings, the synthetic set and white-noise copies "
        "of it at 5 and 0 dB SNR. VAD end-of-speech wait 500 ms (`EDGE_MIN_SILENCE_MS`).",
        "",
        "| mode | final latency p50 ms | p95 ms | finalization p50 ms | p95 ms | edge peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, (l50, l95, f50, f95, rss) in latency.items():
        section.append(f"| {name} | {l50:.0f} | {l95:.0f} | {f50:.0f} | {f95:.0f} | {rss:.0f} |")
    section += [
        "",
        f"Finalization of utterances kept on the edge (pilot mode): p50 {_pct(kept_fin, 50):.0f} ms, "
        f"p95 {_pct(kept_fin, 95):.0f} ms. Final latency is measured from the end of speech on the audio "
        "timeline, so it includes the VAD's silence wait; finalization runs from the endpoint to the event.",
        "",
        "| | edge only | cloud only | hybrid |",
        "|---|---|---|---|",
        f"| WER | {100 * figures['edge_wer']:.1f}% | {100 * figures['cloud_wer']:.1f}% | "
        f"{100 * figures['hybrid_wer']:.1f}% |",
        f"| offload | 0% | 100% | {100 * figures['offload']:.0f}% |",
        "",
        f"Edge RTF (encoder + greedy decode, whole utterances): {rtf:.3f}.",
        "Reproduce: `.venv/bin/python scripts/bench_edge.py`.",
        MARK_END,
    ]
    text = "\n".join(section)
    print(text)
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_BEGIN in current:
        current = re.sub(
            re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), lambda _: text, current, flags=re.S
        )
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)


if __name__ == "__main__":
    main()
