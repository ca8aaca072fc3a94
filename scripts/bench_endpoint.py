"""Open-microphone latency with and without adaptive endpointing: medians of repeated speech-bench runs.

    .venv/bin/python scripts/bench_endpoint.py [--runs 3] [--benchmarks-md BENCHMARKS.md]

Runs ``speech-bench`` (edge only, modes ``edge-adaptive`` = adaptive endpointing and ``edge`` = 500 ms of
silence) ``--runs`` times over the test clips in both patterns (open-mic: silence keeps coming after the
speech, no ``stop``; push-to-talk: ``stop`` right after the speech), latency from the end of speech; then
once over each pause set (pauses of 300-450 ms inside sentences, 1.2-2 s between them; ``pauses``: each
part of a sentence spoken as a sentence of its own, an afterthought; ``hesitations``: the pause cut into one
reading of the whole sentence) for split and merged sentences. Prints the figures and writes them as a
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from speech_bench.markdown import replace_section  # noqa: E402

MARK_BEGIN, MARK_END = "<!-- endpoint-bench:begin -->", "<!-- endpoint-bench:end -->"
MODES = ("edge-adaptive", "edge")
PATTERNS = ("open-mic", "push-to-talk")
CLIPS = (
    ROOT / ".cache" / "test-audio" / "pocketsphinx" / "manifest.jsonl",
    ROOT / ".cache" / "test-audio" / "tts" / "manifest.jsonl",
)
PAUSE_SETS = {
    "pauses": "each part of the sentence spoken as a sentence of its own (an afterthought)",
    "hesitations": "the pause cut into one reading of the whole sentence (a hesitation)",
}


def pause_manifest(name: str) -> Path:
    return ROOT / ".cache" / "bench-sets" / name / "manifest.jsonl"


def speech_bench(manifests: list[Path], out: Path, extra: list[str]) -> dict[str, Any]:
    command = [str(ROOT / ".venv" / "bin" / "speech-bench"), *map(str, manifests), "--modes", *MODES,
               "--out", str(out), *extra]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render(runs: list[dict[str, Any]], pauses: dict[str, dict[str, Any]], clips: int, limit: int) -> str:
    lines = [
        MARK_BEGIN,
        "## Open microphone: adaptive endpointing",
        "",
        f"`scripts/bench_endpoint.py`: speech-bench, edge only (Moonshine base, no cloud), {clips} test "
        "clips (pocketsphinx recordings and flite/espeak-ng TTS) streamed in real time, each in both "
        "patterns: **open-mic** (after the speech the client keeps sending silence and never sends "
        "`stop`; the edge's endpointer must end the utterance) and **push-to-talk** (`stop` right after "
        "the speech). Latency runs from the end of *speech* (the manifest's `speech_end`) to the `final` "
        "event. "
        f"Medians over {len(runs)} runs of each run's percentile; per-run p50 in the last column.",
        "",
        "| mode | pattern | WER | final latency p50 / p95 ms | per-run p50 ms | utterances 0 / 2+ finals |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for pattern in PATTERNS:
            per_run = [r["modes"][mode]["patterns"].get(pattern, {}) for r in runs]
            p50 = median([p.get("latency_ms", {}).get("p50") for p in per_run])
            p95 = median([p.get("latency_ms", {}).get("p95") for p in per_run])
            # WER is scored on the headline (open-mic) records.
            wer = median([r["modes"][mode].get("wer") for r in runs]) if pattern == PATTERNS[0] else None
            bad = [f"{p.get('no_final', 0)} / {p.get('multi_final', 0)}" for p in per_run]
            runs_p50 = ", ".join(_ms(p.get("latency_ms", {}).get("p50")) for p in per_run)
            label = "adaptive" if mode == "edge-adaptive" else "fixed 500 ms"
            wer_text = "-" if wer is None else f"{100 * wer:.2f}%"
            lines.append(
                f"| `{mode}` ({label}) | {pattern} | {wer_text} | {_ms(p50)} / {_ms(p95)} | {runs_p50} | "
                f"{'; '.join(bad)} |"
            )
    if pauses:
        lines += [
            "",
            f"False endpoints on the pause sets (`.cache/bench-sets/<set>`, first {limit} items each, "
            "open-mic, one run): sentences split by a pause inside them, sentences merged into one final, "
            "and the latency of each sentence that got a final of its own. Inner pauses: "
            + "; ".join(f"`{name}`, {how}" for name, how in PAUSE_SETS.items() if name in pauses)
            + ".",
            "",
            "| set | inner pauses | mode | sentences split | merged | missed | spurious "
            "| sentence latency p50 / p95 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, report in pauses.items():
            inner = sum(
                bool(s["pauses"])
                for line in pause_manifest(name).read_text().splitlines()[:limit]
                for s in json.loads(line)["segments"]
            )
            for mode in MODES:
                seg = report["modes"][mode].get("segmentation") or {}
                lat = seg.get("sentence_latency_ms", {})
                counts = " | ".join(str(seg.get(k, "-")) for k in ("split", "merged", "missed", "spurious"))
                latency = f"{_ms(lat.get('p50'))} / {_ms(lat.get('p95'))}"
                lines.append(f"| `{name}` | {inner} | `{mode}` | {counts} | {latency} |")
    lines += ["", MARK_END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pause-items", type=int, default=12, help="items of each pause set (0: skip)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N clips (a quick check)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / ".cache" / "bench-endpoint")
    parser.add_argument("--benchmarks-md", type=Path)
    args = parser.parse_args(argv)
    pause_sets = list(PAUSE_SETS) if args.pause_items else []
    missing = [m for m in (*CLIPS, *map(pause_manifest, pause_sets)) if not m.exists()]
    if missing:
        sys.exit(f"missing {', '.join(map(str, missing))}: run scripts/build_test_audio.py and "
                 "scripts/build_bench_sets.py first")  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = [
        speech_bench(
            list(CLIPS), args.out_dir / f"clips-{k}.json", ["--pattern", "both", "--limit", str(args.limit)]
        )
        for k in range(args.runs)
    ]
    pauses = {
        name: speech_bench(
            [pause_manifest(name)], args.out_dir / f"{name}.json", ["--limit", str(args.pause_items)]
        )
        for name in pause_sets
    }
    clips = sum(1 for m in CLIPS for line in m.read_text().splitlines() if line.strip())
    clips = min(clips, args.limit) if args.limit else clips
    section = render(runs, pauses, clips, args.pause_items)
    print(section)
    if args.benchmarks_md is not None:
        replace_section(args.benchmarks_md, section, MARK_BEGIN, MARK_END)
        print(f"wrote {args.benchmarks_md}")


if __name__ == "__main__":
    main()
