"""Replay a target offload rate (``EDGE_TARGET_OFFLOAD_RATE``, ``edge_agent.offload``) over the confidences
a speech-bench run recorded, against fixed thresholds, and write the "Target offload" section of
BENCHMARKS.md.

    .venv/bin/speech-bench .cache/bench-sets/eval-subset.jsonl --modes cloud --out report.json
    .venv/bin/python scripts/bench_offload.py report.json [--benchmarks-md BENCHMARKS.md]

The cloud mode's records hold, per utterance, the edge's and the cloud's text and P(wrong). Each policy
escalates an utterance when its P(edge wrong) is above its threshold and keeps the likelier of the two
texts (as the agent does). Fixed: the calibrated threshold, and the calibration set's threshold for each
rate. Target: the threshold follows the utterances before each one. Replayed in the run's order (the
bench set's clean clips first, then the noisy ones: a shift in the audio, as a deployment sees when the
room gets loud) and in 50 shuffled orders (mixed traffic; medians). For reference, the best fixed
threshold in hindsight, chosen on these very records (no policy can know it in advance).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.confidence import Calibration  # noqa: E402
from speech_bench import figures  # noqa: E402
from speech_bench.cli import _records_from_report  # noqa: E402
from speech_bench.markdown import replace_section  # noqa: E402

BEGIN, END = "<!-- offload-target:begin -->", "<!-- offload-target:end -->"
RATES = (0.15, 0.2, 0.25)
SHUFFLES = 50


def _cell(point: figures.SweepPoint) -> str:
    return f"{point.wer:.2%} / {point.offload:.1%}"


def render(report: Path, model: str) -> str:
    scored = figures.wer_records(_records_from_report(report)["cloud"])
    calibration = Calibration.for_model(model, None)
    if calibration.route is not None:
        # The records hold P(edge wrong); this calibration's thresholds are on its route model's scale.
        raise SystemExit(
            f"{model}'s calibration escalates by a route model: replay it with scripts/bench_routing.py"
        )
    oracle = figures.oracle(scored)
    lines = [
        BEGIN,
        "## Target offload: a threshold that follows the traffic",
        "",
        f"`scripts/bench_offload.py {report}`, {time.strftime('%Y-%m-%d')}: the confidences of "
        f"{len(scored)} utterances a speech-bench run recorded (edge {model}, cloud Whisper base; the "
        "evaluation subset, none of it calibrated on), replayed per policy. Cells: WER / offload. "
        f"Edge alone {oracle['edge_wer']:.2%}, cloud alone {oracle['cloud_wer']:.2%}, per-utterance "
        f"oracle {oracle['wer']:.2%}.",
        "",
        "| rate | fixed: calibration set's threshold for the rate | target, run order | target, shuffled "
        f"(median of {SHUFFLES}) | best fixed in hindsight within the rate |",
        "|---|---|---|---|---|",
    ]
    points = figures.sweep(scored)
    for rate in RATES:
        fallback = calibration.threshold_for_offload(rate)
        fixed = figures.sweep_at(scored, [fallback])[0]
        in_order = figures.target_replay(scored, rate, fallback)
        shuffled = []
        for seed in range(SHUFFLES):
            order = list(scored)
            random.Random(seed).shuffle(order)
            shuffled.append(figures.target_replay(order, rate, fallback))
        median = figures.SweepPoint(
            statistics.median(p.threshold for p in shuffled),
            statistics.median(p.wer for p in shuffled),
            statistics.median(p.offload for p in shuffled),
        )
        best = figures.best_point(points, rate)
        lines.append(
            f"| {rate:.0%} | {_cell(fixed)} (P > {fallback:.3f}) | {_cell(in_order)} | {_cell(median)} | "
            f"{_cell(best)} (P > {best.threshold:.3f}) |"
        )
    calibrated = figures.sweep_at(scored, [calibration.threshold])[0]
    lines += [
        "",
        f"The shipped calibrated threshold (P > {calibration.threshold:.3f}): {_cell(calibrated)}. "
        "P(wrong) values are the ones the run recorded; the calibration set's thresholds are today's "
        "shipped file's. In the run's order the clean clips come first, so the threshold learned their low "
        "P(wrong) and the noisy clips after them escalated above the share (a target lags a change in the "
        "audio by up to its 200-final window); in mixed order the share holds.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("report", type=Path, help="a speech-bench report with the cloud mode's records")
    parser.add_argument("--model", default="moonshine-base", help="the edge model the run used")
    parser.add_argument("--benchmarks-md", type=Path)
    args = parser.parse_args()
    section = render(args.report, args.model)
    print(section)
    if args.benchmarks_md is not None:
        replace_section(args.benchmarks_md, section, BEGIN, END)
        print(f"wrote {args.benchmarks_md}")


if __name__ == "__main__":
    main()
