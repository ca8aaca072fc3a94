"""``speech-bench``: stream labelled utterances through the real system and measure every mode.

Modes (one edge-agent process each, one shared cloud server, all started here on free ports):
``edge`` (no cloud), ``cloud`` (every utterance sent to the cloud), ``naive`` (no pilot, no speculation:
decode after the endpoint fires, then threshold and escalate) and ``pasu`` (pilot inference, offramps,
early escalation, per-utterance choice). Two edge-only modes isolate late contextualization (PASU): in
``late-ctx`` the pilot encodes audio as it arrives and the final only finishes it; in ``whole-enc`` the
same model encodes the whole utterance after the endpoint (no pilot). Neither runs a speculative final,
so their finalization latencies compare the encoder schedules alone. ``edge-adaptive`` and ``pasu-adaptive``
are ``edge`` and ``pasu`` with adaptive endpointing (the speculative final sets the silence that ends it);
``pasu-late-cloud`` asks the cloud only after the endpoint (no speculative escalation). ``--edge-model`` picks
the edge model (``EDGE_MODEL``) of every edge started. ``--sweep`` replays the recorded confidences across
thresholds without decoding again.

``--pattern`` picks how each utterance is streamed (``speech_bench.streaming``): ``open-mic`` (silence
goes on after the speech until the final comes; the headline), ``push-to-talk`` (``stop`` right after
the speech) or ``both``. Latency is measured from the end of the speech, not of the clip. Items with
``segments`` (the ``pauses`` bench set) are streamed open-mic as a whole and counted for sentences split
by a false endpoint and sentences merged into one final.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speech_bench.streaming import LEAD_S, LEGACY_PATTERN, OPEN_MIC, OPEN_MIC_CAP_S, PATTERNS

if TYPE_CHECKING:
    from edge_agent.confidence import Calibration

MODES: dict[str, list[str]] = {
    "edge": [],
    "cloud": ["--always-cloud"],
    "naive": ["--no-pilot", "--no-offramps", "--no-speculative"],
    "pasu": [],
    "late-ctx": ["--no-speculative"],
    "whole-enc": ["--no-pilot", "--no-speculative"],
    "edge-adaptive": ["--adaptive-endpoint"],
    "pasu-adaptive": ["--adaptive-endpoint"],
    "pasu-late-cloud": ["--no-speculative-escalation"],
}
EDGE_ONLY = ("edge", "late-ctx", "whole-enc", "edge-adaptive")
DEFAULT_MODES = ("edge", "cloud", "naive", "pasu")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speech-bench", description=__doc__)
    p.add_argument(
        "manifests", nargs="*", type=Path, help="NeMo manifests (audio_filepath, text, duration[, kind])"
    )
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(MODES))
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time (latency figures need 1)")
    p.add_argument(
        "--pattern",
        choices=[*PATTERNS, "both"],
        default="both",
        help="open-mic: silence streamed after the speech until the final (the headline); "
        "push-to-talk: stop right after the speech; both (default)",
    )
    p.add_argument("--limit", type=int, default=0, help="only the first N utterances")
    p.add_argument("--out", type=Path, help="write the report (JSON) here")
    p.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    p.add_argument(
        "--keep-logs",
        type=Path,
        help="keep the logs and queues of the services started here in DIR",
        metavar="DIR",
    )
    p.add_argument("--sweep", action="store_true", help="threshold sweep from recorded confidences")
    p.add_argument(
        "--from-report", type=Path, help="reuse a report's records (with --sweep) instead of streaming"
    )
    p.add_argument(
        "--write-calibration", type=Path, help="with --sweep: write a calibration with the best threshold"
    )
    p.add_argument("--max-offload", type=float, default=0.25, help="offload cap for the chosen threshold")
    p.add_argument("--benchmarks-md", type=Path, help="write the figures as a section of this Markdown file")
    p.add_argument("--cloud-model", default="base")
    p.add_argument("--edge-model", help="EDGE_MODEL for the edges started here (default: the agent's)")
    p.add_argument("--threads", type=int, default=2, help="threads for the cloud model")
    p.add_argument(
        "--edge-url", help="use a running edge (ws://host:port/v1/stream) for the single mode given"
    )
    p.add_argument("--cloud-target", help="use a running cloud (host:port gRPC) for the edges started here")
    p.add_argument("--cloud-url", help="HTTP base URL of that running cloud (for its metrics)")
    return p


def patterns_of(choice: str) -> tuple[str, ...]:
    return PATTERNS if choice == "both" else (choice,)


def _records_from_report(path: Path) -> dict[str, list[Any]]:
    from speech_bench.streaming import Record

    data = json.loads(path.read_text())
    return {mode: [Record.from_json(row) for row in d["records"]] for mode, d in data["modes"].items()}


def run_modes(args: argparse.Namespace, utterances: list[Any], workdir: Path) -> tuple[dict[str, Any], dict]:
    from tqdm import tqdm

    from speech_bench import services
    from speech_bench.streaming import stream_utterance

    records: dict[str, list[Any]] = {}
    resources: dict[str, Any] = {}
    cloud = None
    if args.edge_url is None and args.cloud_target is None and not set(args.modes) <= set(EDGE_ONLY):
        cloud = services.start_cloud(args.cloud_model, args.threads, workdir / "cloud.log")
        target, cloud_http = cloud.extra["grpc"], cloud.url
    else:
        target, cloud_http = args.cloud_target or "", args.cloud_url
    patterns = patterns_of(args.pattern)
    # Items with segments are streamed once (open-mic), single utterances once per pattern.
    runs = [(u, p) for u in utterances for p in ((OPEN_MIC,) if u.segments else patterns)]
    bar = tqdm(total=len(runs) * len(args.modes), unit="stream", file=sys.stderr)
    try:
        for mode in args.modes:
            edge = None
            if args.edge_url:
                url = args.edge_url
            else:
                queue = workdir / f"{mode}-queue.sqlite3"
                edge = services.start_edge(
                    MODES[mode], "" if mode in EDGE_ONLY else target, queue, workdir / "edge.log",
                    model=args.edge_model,
                )  # fmt: skip
                url = edge.url.replace("http://", "ws://") + "/v1/stream"
            before = (
                services.metric(services_text(cloud_http), "cloud_inference_seconds_sum")
                if cloud_http
                else 0.0
            )
            mode_records = []
            for utterance, pattern in runs:
                bar.set_description(f"{mode} {pattern}")
                mode_records.append(asyncio.run(stream_utterance(url, utterance, mode, args.speed, pattern)))
                bar.update(1)
            records[mode] = mode_records
            after = (
                services.metric(services_text(cloud_http), "cloud_inference_seconds_sum")
                if cloud_http
                else 0.0
            )
            info: dict[str, Any] = {"cloud_seconds": after - before}
            if edge is not None:
                text = edge.metrics()
                audio = services.metric(text, "edge_audio_seconds_total")
                spent = services.metric(text, "edge_inference_seconds_total")
                health = __import__("httpx").get(f"{edge.url}/health").json()
                info.update(
                    edge_rtf=spent / audio if audio else None,
                    edge_peak_rss_mb=edge.peak_rss_mb(),
                    threshold=health.get("escalation_threshold"),
                    edge_model=health.get("model"),
                )
                edge.stop()
            resources[mode] = info
        if cloud is not None:
            resources["cloud_peak_rss_mb"] = cloud.peak_rss_mb()
    finally:
        bar.close()
        if cloud is not None:
            cloud.stop()
    return records, resources


def services_text(url: str) -> str:
    import httpx

    return httpx.get(f"{url}/metrics", timeout=10).text


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from speech_bench import console, figures
        from speech_bench.manifest import load_manifests
    except ImportError as exc:
        sys.exit(f"speech-bench needs the bench extras: pip install 'edge-cloud-asr[bench]' ({exc})")
    if args.edge_url and len(args.modes) != 1:
        sys.exit("--edge-url measures one running edge: name its mode with --modes MODE")
    if args.sweep and "cloud" not in args.modes and not args.from_report:
        args.modes.append("cloud")  # the sweep needs both texts and both confidences per utterance
    started = time.time()
    resources: dict[str, Any] = {}
    previous_patterns: list[str] = []
    if args.from_report:
        records = _records_from_report(args.from_report)
        previous = json.loads(args.from_report.read_text())
        resources = {
            m: {
                k: v
                for k, v in d.items()
                if k in ("cloud_seconds", "edge_rtf", "edge_peak_rss_mb", "threshold", "edge_model")
            }
            for m, d in previous["modes"].items()
        }
        previous_patterns = previous["settings"].get("patterns", [LEGACY_PATTERN])
    else:
        if not args.manifests:
            sys.exit("give at least one manifest")
        utterances = load_manifests(args.manifests)
        if args.limit:
            utterances = utterances[: args.limit]
        if args.keep_logs:
            if args.keep_logs.exists() and any(args.keep_logs.iterdir()):
                # A queue left by an earlier run would replay its escalations into this one.
                sys.exit(f"--keep-logs {args.keep_logs}: give a new or empty directory")
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            records, resources = run_modes(args, utterances, args.keep_logs)
        else:
            with tempfile.TemporaryDirectory(prefix="speech-bench-") as tmp:
                records, resources = run_modes(args, utterances, Path(tmp))
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {
            "speed": args.speed,
            "patterns": list(patterns_of(args.pattern)) if not args.from_report else previous_patterns,
            "lead_s": LEAD_S,
            "open_mic_cap_s": OPEN_MIC_CAP_S,
            "cloud_model": args.cloud_model,
            "cloud_threads": args.threads,
            "manifests": [str(m) for m in args.manifests],
        },
        "seconds": round(time.time() - started, 1),
        "modes": {},
    }
    for mode, mode_records in records.items():
        data = figures.mode_figures(mode_records)
        data.update(resources.get(mode, {}))
        data["records"] = [r.to_json() for r in mode_records]
        report["modes"][mode] = data
    if "cloud_peak_rss_mb" in resources:
        report["cloud_peak_rss_mb"] = resources["cloud_peak_rss_mb"]
    # One record per utterance (the headline pattern's) for the oracle, the sweep and the calibration.
    scored = figures.wer_records(records["cloud"]) if "cloud" in records else []
    if "cloud" in records:
        report["oracle"] = figures.oracle(scored)
    if args.sweep and "cloud" in records:
        points = figures.sweep(scored)
        best = figures.best_point(points, args.max_offload)
        pasu = resources.get("pasu") or {}
        threshold, edge_model = pasu.get("threshold"), pasu.get("edge_model")
        current = None
        # A calibration with a route model puts its threshold on P(cloud beats edge), not on the P(wrong)
        # the records hold: there is no operating point to place on this sweep.
        if threshold is not None and _calibration(edge_model).route is None:
            current = next(iter(figures.sweep_at(scored, [float(threshold)])), None)
        report["sweep"] = {
            "points": [p.__dict__ for p in points],
            "best_within_offload": best.__dict__,
            "max_offload": args.max_offload,
            "operating_point": current.__dict__ if current else best.__dict__,
        }
        if args.write_calibration:
            write_calibration(args.write_calibration, best.threshold, scored, edge_model)
    print(console.summary(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
        print(f"report: {args.out}")
    if args.plots:
        from speech_bench.plots import write_plots

        for path in write_plots(report, args.plots):
            print(f"plot: {path}")
    if args.benchmarks_md:
        from speech_bench import markdown

        command = "speech-bench " + " ".join(sys.argv[1:] if argv is None else argv)
        plots = os.path.relpath(args.plots, args.benchmarks_md.parent) if args.plots else None
        markdown.update(args.benchmarks_md, markdown.render(report, command, plots))
        print(f"markdown: {args.benchmarks_md}")


def _calibration(edge_model: str | None) -> Calibration:
    """The calibration the edges started here used: the one for ``edge_model`` (as their /health names
    it; ``EDGE_CALIBRATION_PATH`` or the shipped file), else the file as given."""
    from edge_agent.confidence import Calibration

    path = Path(os.environ["EDGE_CALIBRATION_PATH"]) if "EDGE_CALIBRATION_PATH" in os.environ else None
    return Calibration.for_model(edge_model, path) if edge_model else Calibration.load(path)


def write_calibration(
    path: Path, threshold: float, records: list[Any], edge_model: str | None = None
) -> None:
    """The current calibration with the swept threshold and this run's score distribution."""
    import dataclasses

    import numpy as np

    calibration = _calibration(edge_model)
    if calibration.route is not None:
        raise SystemExit(
            "--write-calibration: this calibration escalates by its route model, whose scores the records do "
            "not hold; refit it with `edge-agent calibrate --route` instead"
        )
    scores = [r.edge_p_wrong for r in records if r.edge_p_wrong is not None]
    shift = threshold - calibration.threshold
    updated = dataclasses.replace(
        calibration,
        threshold=threshold,
        early_threshold=min(0.99, calibration.early_threshold + shift),
        stop_threshold=min(0.995, calibration.stop_threshold + shift),
        score_quantiles=tuple(float(q) for q in np.percentile(scores, np.linspace(0, 100, 101))),
        source=f"{calibration.source}; threshold from speech-bench --sweep over {len(scores)} utterances",
    )
    updated.save(path)
    print(f"calibration: {path} (threshold {threshold:.4f})")


if __name__ == "__main__":
    main()
