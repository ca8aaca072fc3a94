"""Benchmark the cloud's pilots: latency from the end of a stream's audio to its answer, pilots on vs
off, same run.

Starts two cloud servers in this process (same model; ``CLOUD_PILOT`` on for one, off for the other)
and streams every utterance of the TTS test set to each over gRPC ``StreamingRecognize``, in 100 ms
chunks paced at real time, alternating between the two (which goes first swaps every repetition).
Latency is taken from the moment gRPC takes the last audio chunk (the end of speech: the stream
half-closes right after) to the answer; each utterance's median over the repetitions, then p50/p95
over utterances. Two requests: the edge's (language ``en``, n-best 3, word times, the server's beam)
and greedy (beam 1, n-best 1). Also reported: pilots that ran, tokens the finals reused, WER, and
how often both servers gave the same best text. Prints a table and writes the "Cloud pilots"
section of BENCHMARKS.md.

Usage: ``.venv/bin/python scripts/bench_cloud_pilot.py [--limit N] [--repeats 3] [--model base]``
(build the audio first: ``.venv/bin/python scripts/build_test_audio.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from asr_common.protos import speech_pb2, speech_pb2_grpc  # noqa: E402
from speech_bench.markdown import replace_section  # noqa: E402
from tests.servers import ThreadedCloud, cloud_settings, wait_until  # noqa: E402
from tests.speech import Clip, load_manifest, wer  # noqa: E402

CHUNK_S = 0.1
MARK_BEGIN = "<!-- cloud-pilot-bench:begin -->"
MARK_END = "<!-- cloud-pilot-bench:end -->"
HEADER = "# Benchmarks\n\nFigures measured on this project's machines.\n"
REQUESTS = {
    "edge": speech_pb2.RecognitionConfig(language="en", n_best=3, word_timestamps=True, sample_rate_hz=16000),
    "greedy": speech_pb2.RecognitionConfig(language="en", beam_size=1, n_best=1, sample_rate_hz=16000),
}


@dataclass
class Answer:
    latency_s: float
    processing_s: float
    pilot_tokens: int
    text: str


@dataclass
class Figures:
    """One request kind on one server: per utterance, its answers over the repetitions."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    pilots_started: float = 0.0

    def per_utterance(self) -> list[float]:
        return [statistics.median(a.latency_s for a in answers) for answers in self.answers.values()]


class PacedStream:
    """A stream's messages, each audio chunk sent at its real-time offset; notes when gRPC took the
    last one."""

    def __init__(self, clip: Clip, config: speech_pb2.RecognitionConfig) -> None:
        self._pcm = clip.pcm16()
        self._config = config
        self._name = clip.path.stem
        self.last_chunk_at = 0.0

    def __iter__(self) -> Iterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(
            streaming_config=speech_pb2.StreamingConfig(
                config=self._config, context=speech_pb2.EdgeContext(utterance_id=self._name)
            )
        )
        step = int(CHUNK_S * 32000)
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(self._pcm), step)):
            # The chunk is sent once the audio it holds has been spoken.
            delay = started + (index + 1) * CHUNK_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield speech_pb2.StreamingRecognizeRequest(audio=self._pcm[offset : offset + step])
        # gRPC asks for the next message once it has taken the last chunk: the end of speech.
        self.last_chunk_at = time.monotonic()


def stream_once(stub: speech_pb2_grpc.CloudRecognizerStub, clip: Clip, kind: str) -> Answer:
    paced = PacedStream(clip, REQUESTS[kind])
    (response,) = stub.StreamingRecognize(iter(paced), timeout=120)
    received = time.monotonic()
    result = response.result
    return Answer(
        latency_s=received - paced.last_chunk_at,
        processing_s=result.processing_seconds,
        pilot_tokens=result.pilot_tokens,
        text=result.hypotheses[0].text if result.hypotheses else "",
    )


def _idle(cloud: ThreadedCloud) -> bool:
    pool = cloud.runtime.pool
    return bool(pool.pending == 0 and pool.background == 0)


def run(
    clips: list[Clip], model: str, cache: str, repeats: int, kinds: list[str]
) -> dict[str, dict[str, Figures]]:
    clouds = {
        "on": ThreadedCloud(cloud_settings(cache, model=model, pilot=True)).start(),
        "off": ThreadedCloud(cloud_settings(cache, model=model, pilot=False)).start(),
    }
    figures = {kind: {mode: Figures() for mode in clouds} for kind in kinds}
    channels = {mode: grpc.insecure_channel(cloud.grpc_target) for mode, cloud in clouds.items()}
    try:
        stubs = {mode: speech_pb2_grpc.CloudRecognizerStub(channel) for mode, channel in channels.items()}
        for kind in kinds:
            for mode, cloud in clouds.items():
                figures[kind][mode].pilots_started = -cloud.metric("cloud_pilots_total", {"event": "started"})
            for rep in range(repeats):
                for n, clip in enumerate(clips):
                    # Alternate which server goes first, per utterance and per repetition.
                    order = ("on", "off") if (rep + n) % 2 == 0 else ("off", "on")
                    for mode in order:
                        wait_until(partial(_idle, clouds[mode]), timeout=120)
                        answer = stream_once(stubs[mode], clip, kind)
                        figures[kind][mode].answers.setdefault(clip.path.stem, []).append(answer)
                        print(
                            f"{kind:6} rep {rep + 1} {clip.path.stem:16} pilots {mode:3}: "
                            f"{1000 * answer.latency_s:6.0f} ms, reused {answer.pilot_tokens:2d}  "
                            f"{answer.text}",
                            flush=True,
                        )
            for mode, cloud in clouds.items():
                figures[kind][mode].pilots_started += cloud.metric("cloud_pilots_total", {"event": "started"})
    finally:
        for channel in channels.values():
            channel.close()
        for cloud in clouds.values():
            cloud.stop()
    return figures


def _row(kind: str, mode: str, f: Figures, clips: list[Clip], same: float) -> str:
    latencies = f.per_utterance()
    answers = [a for per in f.answers.values() for a in per]
    best = [statistics.mode(a.text for a in f.answers[c.path.stem]) for c in clips]
    return (
        f"| {kind} | {mode} | {1000 * float(np.percentile(latencies, 50)):.0f} | "
        f"{1000 * float(np.percentile(latencies, 95)):.0f} | "
        f"{1000 * statistics.median(a.processing_s for a in answers):.0f} | "
        f"{f.pilots_started / len(answers):.1f} | {statistics.mean(a.pilot_tokens for a in answers):.1f} | "
        f"{100 * wer([c.text for c in clips], best):.1f}% | {100 * same:.0f}% |"
    )


def render(figures: dict[str, dict[str, Figures]], clips: list[Clip], model: str, repeats: int) -> str:
    lines = [
        MARK_BEGIN,
        "## Cloud pilots: end of speech to the cloud's answer, pilots on vs off",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; Whisper `{model}`, CTranslate2 int8, 2 threads, 1 worker per "
        f"server; {len(clips)} TTS utterances ({sum(c.duration for c in clips):.0f} s) streamed over gRPC "
        f"`StreamingRecognize` in {1000 * CHUNK_S:.0f} ms chunks at real time, to a server with pilots on "
        f"and one with pilots off in turn, {repeats} repetition(s). Latency: from gRPC taking the last chunk "
        "to the answer, each utterance's median over the repetitions, then p50/p95 over utterances. "
        "Requests: `edge` = language en, n-best 3, word times, beam 5 (what the edge sends); "
        "`greedy` = beam 1, n-best 1.",
        "",
        "| request | pilots | latency p50 ms | latency p95 ms | server processing p50 ms | "
        "pilots per stream | tokens reused per final | WER | same best text as the other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, modes in figures.items():
        keys = [c.path.stem for c in clips]
        agree = [
            all(a.text == b.text for a in modes["on"].answers[k] for b in modes["off"].answers[k])
            for k in keys
        ]
        same = sum(agree) / len(agree)
        for mode, f in modes.items():
            lines.append(_row(kind, mode, f, clips, same))
    lines += [
        "",
        "Reproduce: `.venv/bin/python scripts/bench_cloud_pilot.py` "
        "(`--limit N`: the first N utterances only).",
        MARK_END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, help="only the first N utterances")
    parser.add_argument("--requests", nargs="+", choices=sorted(REQUESTS), default=["edge", "greedy"])
    parser.add_argument("--audio", type=Path, default=ROOT / ".cache" / "test-audio" / "tts")
    parser.add_argument("--model-cache-dir", default=str(ROOT / ".cache" / "models"))
    parser.add_argument("--benchmarks-md", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clips = load_manifest(args.audio / "manifest.jsonl")[: args.limit]
    figures = run(clips, args.model, args.model_cache_dir, args.repeats, args.requests)
    section = render(figures, clips, args.model, args.repeats)
    print(section)
    replace_section(args.benchmarks_md, section, MARK_BEGIN, MARK_END, HEADER)
    print(f"wrote the section to {args.benchmarks_md}")


if __name__ == "__main__":
    main()
