"""Which utterances should the edge send to the cloud? Routing fitted on one labelled set, judged on sets
it never saw, and BENCHMARKS.md's "Routing" section.

Input: per-clip feature files of ``edge-agent calibrate --features`` (the edge's decode features, the
edge's and the cloud's text and error counts). Each policy decides as the agent does: it escalates the
utterances whose escalation score (``Calibration.escalation_score``) is above its threshold, and keeps the
cloud's text of those its calibration prefers (``offramp.choose``).

    .venv/bin/python scripts/make_broad_calibration_set.py
    .venv/bin/edge-agent calibrate .cache/broad-calibration/fit/manifest.jsonl --features FIT.jsonl ...
    .venv/bin/python scripts/bench_routing.py --fit FIT.jsonl --baseline OLD.json \
        --eval held-out=HELD.jsonl eval-subset=EVAL.jsonl [--benchmarks-md BENCHMARKS.md]

Policies: ``--baseline``, a calibration file (the one shipped before); *p-wrong*, a refit on the ``--fit``
rows as that one was fitted (escalate by P(edge wrong), keep the text with the lower P(wrong)); *route*, a
refit with ``--route`` (escalate by P(cloud beats edge) from the edge's features, keep the text a model of
both sides' features prefers). Each with its own threshold (*fixed*, chosen on its fitting rows for at most
``--max-offload``) and as the top share of each set by its score (what ``EDGE_TARGET_OFFLOAD_RATE``
converges to on steady traffic). The refits are cross-validated on the fit rows by voice family (a fold's
voices and, since every clip speaks its own sentence, its sentences are never fitted on). *oracle*: per
utterance the better text; *oracle within N %*: the best any routing could do escalating at most that share.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.calibrate import Row, fit, simulate_choice  # noqa: E402
from edge_agent.confidence import Calibration, pick_features  # noqa: E402
from speech_bench.markdown import replace_section  # noqa: E402

BEGIN, END = "<!-- routing:begin -->", "<!-- routing:end -->"
FOLDS = 5


def load(path: Path) -> list[Row]:
    return [Row(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def words(rows: Sequence[Row]) -> int:
    return sum(r.words for r in rows) or 1


def oracle_within(rows: Sequence[Row], share: float) -> float:
    """The lowest WER any routing reaches escalating at most ``share`` of the utterances (each escalated
    one takes the better text)."""
    gains = sorted((r.edge_errors - r.cloud_errors for r in rows), reverse=True)
    budget = int(share * len(rows) + 1e-9)
    return (sum(r.edge_errors for r in rows) - sum(g for g in gains[:budget] if g > 0)) / words(rows)


def decide(calibration: Calibration, rows: list[Row]) -> tuple[np.ndarray, np.ndarray]:
    """Per row, as the agent decides: the escalation score, and whether the cloud's text is kept."""
    scores = np.array([calibration.escalation_score(r.final) for r in rows])
    if calibration.pick is not None:
        pick = calibration.pick
        take = np.array([pick.probability(pick_features(r.final, r.cloud)) > 0.5 for r in rows])
    else:
        p_edge = np.array([calibration.final.probability(r.final) for r in rows])
        take = np.array([calibration.cloud.probability(r.cloud) for r in rows]) < p_edge
    return scores, take


def top_share(p: np.ndarray, share: float) -> float:
    """The threshold above which at most ``share`` of ``p`` lies."""
    if share <= 0 or len(p) == 0:
        return 1.0
    ordered = np.sort(p)[::-1]
    k = int(share * len(p) + 1e-9)
    return float(ordered[k]) if k < len(p) else float(ordered[-1]) - 1e-12


def voice_family(row_voice: str) -> str:
    """A voice without variant, speed, pitch or blend: ``espeak/en-gb+m3@150/40`` -> ``espeak/en-gb``,
    ``kokoro/jf_alpha+jm_kumo:0.3@90/0`` -> ``kokoro/jf_alpha``."""
    engine, _, name = row_voice.partition("/")
    return f"{engine}/{name.split('@')[0].split('+')[0].split(':')[0]}"


Route = Callable[[Calibration, list[Row]], tuple[float, float]]
"""(WER, offload) of a calibration's routing on some rows."""


def fixed(calibration: Calibration, rows: list[Row]) -> tuple[float, float]:
    scores, take = decide(calibration, rows)
    return simulate_choice(rows, scores, take, calibration.threshold)


def top(share: float) -> Route:
    def route(calibration: Calibration, rows: list[Row]) -> tuple[float, float]:
        scores, take = decide(calibration, rows)
        return simulate_choice(rows, scores, take, top_share(scores, share))

    return route


def cross_validate(
    rows: list[Row], with_route: bool, max_offload: float, route: Route
) -> tuple[float, float]:
    """(WER, offload) with each fold of voice families routed by a model fitted on the other folds."""
    voices = [voice_family(r.voice) for r in rows]
    fold_of = {f: i % FOLDS for i, f in enumerate(sorted(set(voices)))}
    errors = escalated = 0.0
    for k in range(FOLDS):
        train = [r for r, v in zip(rows, voices, strict=True) if fold_of[v] != k]
        test = [r for r, v in zip(rows, voices, strict=True) if fold_of[v] == k]
        if test and train:
            wer, offload = route(fit(train, max_offload, "cv", "binary", with_route)[0], test)
            errors += wer * words(test)
            escalated += offload * len(test)
    return errors / words(rows), escalated / len(rows)


def cell(wer: float, offload: float | None, baseline: float) -> str:
    shown = f"{wer:.2%}" if offload is None else f"{wer:.2%} / {offload:.0%}"
    return f"{shown} ({(wer - baseline) / baseline:+.0%})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=Path, nargs="+", required=True, help="feature files to fit on")
    parser.add_argument("--eval", nargs="+", required=True, help="NAME=FEATURES sets to judge on")
    parser.add_argument("--max-offload", type=float, default=0.25)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.2, 0.25], help="target offload rates")
    parser.add_argument(
        "--baseline", type=Path, help="a calibration file to compare (the one shipped before)"
    )
    parser.add_argument("--write-calibration", type=Path, help="save the route refit here")
    parser.add_argument("--benchmarks-md", type=Path)
    args = parser.parse_args(argv)

    fit_rows = [r for path in args.fit for r in load(path)]
    model = fit_rows[0].model
    source = ", ".join(sorted({r.manifest for r in fit_rows})) + f"; {len(fit_rows)} utterances"
    refits = {
        name: fit(fit_rows, args.max_offload, source, "binary", name == "route")[0]
        for name in ("p-wrong", "route")
    }
    if args.write_calibration:
        refits["route"].save(args.write_calibration)
    routes: dict[str, Route] = {"fixed": fixed, **{f"top {s:.0%}": top(s) for s in args.shares}}
    models = ({"before": Calibration.load(args.baseline)} if args.baseline else {}) | refits
    sets = {name: load(Path(path)) for name, _, path in (spec.partition("=") for spec in args.eval)}
    cv = all(r.voice for r in fit_rows)
    columns = ([f"fitting clips, CV by voice ({len(fit_rows)})"] if cv else []) + [
        f"{name} ({len(rows)})" for name, rows in sets.items()
    ]
    lines = [
        BEGIN,
        "## Routing: which utterances go to the cloud",
        "",
        f"`scripts/bench_routing.py`, {time.strftime('%Y-%m-%d')}: edge {model}, cloud Whisper base (its own "
        f"text, no second pass), per-clip features of `edge-agent calibrate --features`. Refits on {source}. "
        "Cells: WER / share of utterances escalated (change against the better of edge and cloud alone). "
        "Each policy escalates the utterances whose score is above its threshold and keeps the cloud's text "
        "where its calibration prefers it, as the agent does. *before*: the calibration shipped before "
        "(fitted on the calibration set and the 12 pocketsphinx recordings, which the evaluation subset "
        "holds too); *p-wrong*: refit as that one was (score P(edge wrong), keep the text with the lower "
        "P(wrong)); *route*: `edge-agent calibrate --route`, now shipped (score P(cloud beats edge) from the "
        "edge's features, keep the text a model of both sides' features prefers). *fixed*: the "
        f"calibration's threshold, chosen on its fitting clips for at most {args.max_offload:.0%}; *top "
        "N %*: the N % of a set's utterances with the highest score (what `EDGE_TARGET_OFFLOAD_RATE` "
        "converges to on steady traffic). On the fitting clips the refits are cross-validated "
        f"({FOLDS} folds of voice families; each clip speaks its own sentence, so a fold's sentences are "
        "new too), and *before* is not shown (it was fitted on some of them).",
        "",
        "| policy | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    all_sets = ({"fit": fit_rows} if cv else {}) | sets

    def total(rows: list[Row], attr: str) -> float:
        return sum(getattr(r, attr) for r in rows) / words(rows)

    best = {k: min(total(rows, "edge_errors"), total(rows, "cloud_errors")) for k, rows in all_sets.items()}
    baselines: list[tuple[str, Callable[[list[Row]], float]]] = [
        ("edge alone", lambda rows: total(rows, "edge_errors")),
        ("cloud alone", lambda rows: total(rows, "cloud_errors")),
        (
            "oracle (per utterance)",
            lambda rows: sum(min(r.edge_errors, r.cloud_errors) for r in rows) / words(rows),
        ),
        *((f"oracle within {s:.0%}", functools.partial(oracle_within, share=s)) for s in args.shares),
    ]
    for label, value in baselines:
        lines.append(
            f"| {label} | " + " | ".join(cell(value(r), None, best[k]) for k, r in all_sets.items()) + " |"
        )
    for name, calibration in models.items():
        for route_name, route in routes.items():
            cells = []
            for k, rows in all_sets.items():
                if k == "fit" and name == "before":
                    cells.append("-")
                    continue
                held = k == "fit"
                wer, offload = (
                    cross_validate(rows, name == "route", args.max_offload, route)
                    if held
                    else route(calibration, rows)
                )
                cells.append(cell(wer, offload, best[k]))
            lines.append(f"| {name}, {route_name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    lines.append(END)
    print("\n".join(lines[len(lines) - 6 :]))
    if args.benchmarks_md:
        replace_section(args.benchmarks_md, "\n".join(lines) + "\n", BEGIN, END)
        print(f"wrote {args.benchmarks_md}")


if __name__ == "__main__":
    main()
