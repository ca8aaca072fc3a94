"""Second pass in the cloud, measured: does rescoring the edge's and the cloud's n-best under Whisper
beat both single models?

For every labelled utterance: the edge n-best as the edge agent sends it (Moonshine greedy text with
its summed token log-prob, then the beam alternatives ``beam_nbest(beam=3, n_best=3)`` that differ
from it), the cloud n-best (``WhisperEngine.recognize(n_best=3)``), and ``WhisperEngine.score()`` of
every distinct candidate text. All of it is cached per utterance in a JSONL file, so the fit below can
be re-run without decoding (``--no-decode``).

The combined score of a candidate (``cloud_server.engine.candidate_features`` and
``SecondPassWeights.combine``: exactly what the cloud computes at serving time):

    a * whisper_avg_logprob
  + b * (edge log_prob / (whisper tokens + 1) if the text is in the edge list, else a fitted default)
  + c * [in both lists] + d * [the edge's best] + g * [the cloud's best]

Lists are matched on text up to casing and punctuation. Three families, simplest first: Whisper's score
alone (a=1, nothing fitted), plus the agreement bonus c, and all of it. Weights are fitted by grid search
for the fewest word errors with 2-fold cross-validation over sentences (a sentence's noisy copies stay in
one fold), seeded, repeated over ``--seeds`` splits; "nCV" also cross-validates the choice of family
(nested). The table reports held-out WER (tests.speech.wer: Whisper's English normalizer). The serving
family is the one with the lowest mean held-out WER; ``--write-weights`` stores it fitted on all data.
Runtime: ~2.4 s per utterance to decode on 2 threads (~12 min for the 304), ~20 s to fit from the cache.

Usage: ``.venv/bin/python scripts/eval_second_pass.py [--limit N] [--no-decode] [--write-weights PATH]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cloud_server.engine import (  # noqa: E402
    CandidateFeatures,
    EdgeCandidate,
    SecondPassWeights,
    TextScore,
    candidate_features,
)
from tests.speech import Clip, load_manifest, normalize, wer  # noqa: E402

SETS = {
    "pocketsphinx": ROOT / ".cache" / "test-audio" / "pocketsphinx" / "manifest.jsonl",
    "tts": ROOT / ".cache" / "test-audio" / "tts" / "manifest.jsonl",
    "calibration": ROOT / ".cache" / "calibration-set" / "manifest.jsonl",
}
DEFAULT_CACHE = ROOT / ".cache" / "second-pass" / "candidates.jsonl"
EDGE_BEAM = 3
CLOUD_N_BEST = 3
FEATURES = ("whisper", "edge", "both", "edge_best", "cloud_best")


# -- decoding (slow; cached) ---------------------------------------------------------------------


def _row_key(set_name: str, clip: Clip) -> str:
    return f"{set_name}/{clip.path.name}"


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["key"]] = row
    return rows


def decode_all(clips: Sequence[tuple[str, Clip]], cache: Path, threads: int) -> None:
    """Decode every clip not in the cache yet and append its row."""
    from cloud_server.engine import WhisperEngine
    from cloud_server.model_store import resolve_model
    from cloud_server.results import RecognizeOptions
    from edge_agent.asr.moonshine.decoding import beam_nbest, greedy_decode
    from edge_agent.asr.moonshine.stream import load_moonshine

    done = load_cache(cache)
    todo = [(s, c) for s, c in clips if _row_key(s, c) not in done]
    if not todo:
        return
    print(f"decoding {len(todo)} utterances ({len(clips) - len(todo)} cached) into {cache}", flush=True)
    edge = load_moonshine(None, ROOT / ".cache" / "edge-models", threads, max_chunk_s=25.0).model
    engine = WhisperEngine(
        resolve_model("base", ROOT / ".cache" / "models"), compute_type="int8", cpu_threads=threads, workers=1
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with cache.open("a") as out:
        for i, (set_name, clip) in enumerate(todo):
            audio = clip.samples()
            t0 = time.perf_counter()
            encoded = edge.encode(audio)
            greedy = greedy_decode(edge, encoded)
            beams = beam_nbest(edge, encoded, beam=EDGE_BEAM, n_best=EDGE_BEAM)
            # As the edge agent builds its EdgeContext: the greedy text (summed token log-probs), then
            # the beam alternatives that differ from it (summed log-probs, end-of-sequence included).
            edge_list: list[dict[str, Any]] = [
                {"text": greedy.text, "log_prob": float(sum(t.logprob for t in greedy.tokens))}
            ]
            edge_list += [
                {"text": h.text, "log_prob": float(h.logprob)} for h in beams if h.text != greedy.text
            ]
            t1 = time.perf_counter()
            cloud = engine.recognize(audio, RecognizeOptions(language="en", n_best=CLOUD_N_BEST))
            cloud_list: list[dict[str, Any]] = [
                {"text": h.text, "avg_logprob": h.avg_logprob, "no_speech_prob": h.no_speech_prob}
                for h in cloud.hypotheses
            ]
            t2 = time.perf_counter()
            texts = list(dict.fromkeys([*(h["text"] for h in cloud_list), *(h["text"] for h in edge_list)]))
            scores = engine.score(audio, texts, language="en")
            t3 = time.perf_counter()
            row = {
                "key": _row_key(set_name, clip),
                "set": set_name,
                "kind": clip.kind,
                "ref": clip.text,
                "duration": clip.duration,
                "edge": edge_list,
                "cloud": cloud_list,
                "scores": [
                    {
                        "text": s.text,
                        "sum_logprob": s.sum_logprob,
                        "avg_logprob": s.avg_logprob,
                        "tokens": len(s.tokens),
                    }
                    for s in scores
                ],
                "seconds": {"edge": t1 - t0, "cloud": t2 - t1, "score": t3 - t2},
            }
            out.write(json.dumps(row) + "\n")
            out.flush()
            if (i + 1) % 20 == 0 or i + 1 == len(todo):
                rate = (time.perf_counter() - started) / (i + 1)
                print(f"  {i + 1}/{len(todo)} ({rate:.2f} s/utt)", flush=True)


# -- candidates and features ----------------------------------------------------------------------


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(errors, reference words) after Whisper's English normalization."""
    import jiwer

    r, h = normalize(ref), normalize(hyp)
    if not h:
        return len(r.split()), len(r.split())
    out = jiwer.process_words(r, h)
    return out.substitutions + out.deletions + out.insertions, len(r.split())


@dataclass
class Table:
    """Every candidate of every utterance, flattened; utterances are contiguous."""

    rows: list[dict[str, Any]]
    utt: np.ndarray
    texts: list[str]
    x: np.ndarray
    """[candidates, FEATURES]; the edge column is NaN for candidates not in the edge list."""
    errors: np.ndarray
    ref_words: np.ndarray
    """Per utterance."""

    def pick(self, score: np.ndarray) -> np.ndarray:
        """Index of the best-scored candidate per utterance (ties: the earlier candidate)."""
        if not len(score):  # a fold of a tiny --limit run can be empty
            return np.zeros(0, dtype=np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(self.utt)) + 1]
        best = np.repeat(np.maximum.reduceat(score, starts), np.diff(np.r_[starts, len(score)]))
        hits = np.flatnonzero(score >= best)
        return hits[np.r_[0, np.flatnonzero(np.diff(self.utt[hits])) + 1]]

    def subset(self, utts: np.ndarray) -> Table:
        mask = np.isin(self.utt, utts)
        return Table(self.rows, self.utt[mask], [], self.x[mask], self.errors[mask], self.ref_words)


def features_of(row: dict[str, Any]) -> list[CandidateFeatures]:
    """The candidates of one cached utterance, exactly as the cloud's second pass builds them."""
    # Only the token counts are cached, which is all the features need of the tokens.
    scores = {
        s["text"]: TextScore(s["text"], s["sum_logprob"], s["avg_logprob"], (0,) * s["tokens"])
        for s in row["scores"]
    }
    edge = [EdgeCandidate(h["text"], h["log_prob"]) for h in row["edge"]]
    return candidate_features([h["text"] for h in row["cloud"]], edge, scores)


def build_table(rows: list[dict[str, Any]]) -> Table:
    utt: list[int] = []
    texts: list[str] = []
    feats: list[list[float]] = []
    errors: list[int] = []
    ref_words: list[int] = []
    for u, row in enumerate(rows):
        ref_words.append(len(normalize(row["ref"]).split()))
        for f in features_of(row):
            utt.append(u)
            texts.append(f.text)
            feats.append([f.whisper, np.nan if f.edge is None else f.edge, f.both, f.edge_best, f.cloud_best])
            errors.append(word_errors(row["ref"], f.text)[0])
    x = np.asarray(feats, dtype=np.float64)
    return Table(rows, np.asarray(utt), texts, x, np.asarray(errors), np.asarray(ref_words))


# -- weights ---------------------------------------------------------------------------------------


Weights = SecondPassWeights


def score_matrix(w: Weights, x: np.ndarray) -> np.ndarray:
    """``SecondPassWeights.combine`` over a feature matrix."""
    edge = np.where(np.isnan(x[:, 1]), w.edge_default, x[:, 1])
    return (
        w.whisper * x[:, 0]
        + w.edge * edge
        + w.both * x[:, 2]
        + w.edge_best * x[:, 3]
        + w.cloud_best * x[:, 4]
    )


def weights_dict(w: Weights) -> dict[str, float]:
    return {name: value for name, value in asdict(w).items() if name != "model"}


def complexity(w: Weights) -> float:
    return abs(w.edge) + abs(w.both) + abs(w.edge_best) + abs(w.cloud_best) + (1 - w.whisper)


# Model families, simplest first: Whisper's score alone (nothing to fit); plus a bonus for a text both
# lists hold; the full combination with the edge's own log-prob and bonuses for either list's best.
FAMILIES = ("whisper", "whisper+agree", "full")
AGREE = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
BONUSES = (0.0, 0.05, 0.1, 0.2, 0.5)
EDGE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def grid(table: Table, family: str) -> Iterable[Weights]:
    if family == "whisper":
        yield Weights(1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return
    if family == "whisper+agree":
        for both in AGREE:
            yield Weights(1.0, 0.0, 0.0, both, 0.0, 0.0)
        return
    edge_values = table.x[:, 1]
    edge_values = edge_values[~np.isnan(edge_values)]
    quantiles = np.percentile(edge_values, (0, 5, 25, 50)) if len(edge_values) else [0.0]
    defaults = sorted({round(float(q), 4) for q in quantiles})
    for whisper, edge in itertools.product((0.0, 1.0), EDGE_WEIGHTS):
        if whisper == 0.0 and edge == 0.0:
            continue
        for default in defaults if edge else [0.0]:
            for both, edge_best, cloud_best in itertools.product(BONUSES, BONUSES, BONUSES):
                yield Weights(whisper, edge, default, both, edge_best, cloud_best)


def fit(table: Table, train: np.ndarray, family: str) -> tuple[Weights, int]:
    """The grid point with the fewest word errors on ``train`` (ties: the simplest), and its errors."""
    sub = table.subset(train)
    best: tuple[int, float, Weights] | None = None
    for weights in grid(sub, family):
        errors = int(sub.errors[sub.pick(score_matrix(weights, sub.x))].sum())
        if best is None or (errors, complexity(weights)) < best[:2]:
            best = (errors, complexity(weights), weights)
    assert best is not None
    return best[2], best[0]


def folds(table: Table, utts: np.ndarray, seed: int, k: int = 2) -> list[np.ndarray]:
    """``utts`` split in k folds; all utterances of one sentence (its noisy copies) share a fold."""
    group = {u: normalize(table.rows[u]["ref"]) for u in utts}
    rng = np.random.default_rng(seed)
    fold_of = {g: i % k for i, g in enumerate(rng.permutation(sorted(set(group.values()))))}
    return [np.asarray([u for u in utts if fold_of[group[u]] == f], dtype=np.int64) for f in range(k)]


Chooser = Callable[[np.ndarray], Weights]


def held_out(table: Table, utts: np.ndarray, seed: int, choose: Chooser) -> tuple[np.ndarray, list[Weights]]:
    """Per utterance of ``utts``, the candidate picked by weights chosen on the other fold."""
    picks = np.full(len(table.rows), -1)
    chosen = []
    parts = folds(table, utts, seed)
    for i, part in enumerate(parts):
        weights = choose(np.concatenate([p for j, p in enumerate(parts) if j != i]))
        chosen.append(weights)
        picks[part] = table.pick(score_matrix(weights, table.x))[part]
    return picks, chosen


def family_chooser(table: Table, family: str) -> Chooser:
    return lambda train: fit(table, train, family)[0]


def nested_chooser(table: Table, seed: int) -> Chooser:
    """Choose the family by an inner 2-fold CV on the training part, then fit it on all of it."""

    def choose(train: np.ndarray) -> Weights:
        def inner_errors(family: str) -> int:
            picks, _ = held_out(table, train, seed + 1000, family_chooser(table, family))
            return int(table.errors[picks[train]].sum())

        family = min(FAMILIES, key=lambda f: (inner_errors(f), FAMILIES.index(f)))
        return fit(table, train, family)[0]

    return choose


# -- report ----------------------------------------------------------------------------------------


def corpus_wer(table: Table, picks: np.ndarray, utts: Sequence[int] | None = None) -> float:
    us = range(len(table.rows)) if utts is None else utts
    return wer([table.rows[u]["ref"] for u in us], [table.texts[picks[u]] for u in us])


def report(table: Table, systems: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """WER per set (and per condition of the calibration set) of each system's picks."""
    groups: dict[str, list[int]] = {}
    for u, r in enumerate(table.rows):
        groups.setdefault(r["set"], []).append(u)
        if r["set"] == "calibration":
            groups.setdefault(f"  calibration/{r['kind']}", []).append(u)
    groups["overall"] = list(range(len(table.rows)))
    out: dict[str, dict[str, float]] = {}
    header = f"{'set':24s} {'utts':>5s} " + " ".join(f"{name:>13s}" for name in systems)
    print(header)
    print("-" * len(header))
    for name in sorted(groups, key=lambda g: (g == "overall", g.strip().split("/")[0], g.strip())):
        us = groups[name]
        out[name.strip()] = {s: corpus_wer(table, picks, us) for s, picks in systems.items()}
        cells = " ".join(f"{100 * out[name.strip()][s]:12.2f}%" for s in systems)
        print(f"{name:24s} {len(us):5d} {cells}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--limit", type=int, default=0, help="at most N utterances per set (0: all)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-decode", action="store_true", help="fit from the cache only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the cross-validation split in the table")
    parser.add_argument("--seeds", type=int, default=10, help="splits to average the held-out WER over")
    parser.add_argument("--write-weights", type=Path, help="write the weights fitted on all data (JSON)")
    parser.add_argument("--json", type=Path, help="write the numbers as JSON")
    args = parser.parse_args(argv)

    clips = []
    for set_name in args.sets:
        manifest = load_manifest(SETS[set_name])
        clips += [(set_name, c) for c in (manifest[: args.limit] if args.limit else manifest)]
    if not args.no_decode:
        decode_all(clips, args.cache, args.threads)
    cached = load_cache(args.cache)
    rows = [cached[_row_key(s, c)] for s, c in clips if _row_key(s, c) in cached]
    if not rows:
        print("nothing cached to evaluate", file=sys.stderr)
        return 1
    if len(rows) < len(clips):
        print(f"note: {len(clips) - len(rows)} utterances are not in the cache", file=sys.stderr)
    table = build_table(rows)
    everything = np.arange(len(rows))
    seconds = {k: float(np.mean([r["seconds"][k] for r in rows])) for k in ("edge", "cloud", "score")}
    print(
        f"{len(rows)} utterances, {len(table.texts)} candidates ({len(table.texts) / len(rows):.2f}/utt); "
        "mean seconds per utterance: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
    )

    firsts = np.r_[0, np.flatnonzero(np.diff(table.utt)) + 1]  # each utterance's first: the cloud's best
    edge_best = np.asarray(
        [firsts[u] + table.texts[firsts[u] :].index(r["edge"][0]["text"]) for u, r in enumerate(rows)]
    )
    oracle = np.asarray([firsts[u] + int(np.argmin(table.errors[table.utt == u])) for u in everything])
    systems: dict[str, np.ndarray] = {"edge": edge_best, "cloud": firsts}
    fitted: dict[str, list[Weights]] = {}
    for family in FAMILIES:
        label = family if family == "whisper" else f"{family} CV"
        systems[label], fitted[label] = held_out(table, everything, args.seed, family_chooser(table, family))
    systems["selected nCV"], fitted["selected nCV"] = held_out(
        table, everything, args.seed, nested_chooser(table, args.seed)
    )
    systems["oracle"] = oracle
    print(
        f"\nWER. whisper: Whisper's score alone (nothing fitted); CV: held out in 2-fold cross-validation "
        f"over sentences (seed {args.seed});\nnCV: the family chosen by an inner CV on each training half "
        "(nested), then fitted on it; oracle: the best candidate of the union"
    )
    numbers = report(table, systems)
    for label, chosen in fitted.items():
        if label != "whisper":
            print(f"  {label}: " + "; ".join(f"fold {i}: {weights_dict(w)}" for i, w in enumerate(chosen)))

    spread: dict[str, list[float]] = {"whisper": [numbers["overall"]["whisper"]]}
    for seed in range(args.seeds):
        for family in FAMILIES[1:]:
            picks, _ = held_out(table, everything, seed, family_chooser(table, family))
            spread.setdefault(f"{family} CV", []).append(corpus_wer(table, picks))
        picks, _ = held_out(table, everything, seed, nested_chooser(table, seed))
        spread.setdefault("selected nCV", []).append(corpus_wer(table, picks))
    print(f"\noverall held-out WER over {args.seeds} seeded splits:")
    for label, values in spread.items():
        print(
            f"  {label:18s} mean {100 * np.mean(values):.2f}%  sd {100 * np.std(values):.2f}%  "
            f"min {100 * min(values):.2f}%  max {100 * max(values):.2f}%"
        )

    # Serving: the family with the lowest mean held-out WER, fitted on everything. It helps when its
    # held-out WER beats both single models on every split.
    def label_of(family: str) -> str:
        return family if family == "whisper" else f"{family} CV"

    family = min(FAMILIES, key=lambda f: float(np.mean(spread[label_of(f)])))
    final, _ = fit(table, everything, family)
    picks = table.pick(score_matrix(final, table.x))
    for u, row in enumerate(rows):  # the vectorised fit ranks as the server will
        assert table.texts[picks[u]] == max(features_of(row), key=final.combine).text
    edge_wer, cloud_wer = numbers["overall"]["edge"], numbers["overall"]["cloud"]
    held = spread[label_of(family)]
    helps = max(held) < min(edge_wer, cloud_wer)
    print(
        f"\nserving family {family!r}: held-out {100 * float(np.mean(held)):.2f}% (worst split "
        f"{100 * max(held):.2f}%) vs edge {100 * edge_wer:.2f}%, cloud {100 * cloud_wer:.2f}%: "
        + ("beats both on every split" if helps else "does NOT beat both on every split")
    )
    print(
        f"  caveat: choosing the family is itself fitted; cross-validated too (nCV) it gives "
        f"{100 * float(np.mean(spread['selected nCV'])):.2f}% on average"
    )
    in_sample = corpus_wer(table, picks)
    print(f"  weights fitted on all data (in-sample WER {100 * in_sample:.2f}%): {weights_dict(final)}")
    summary = {
        "edge": edge_wer,
        "cloud": cloud_wer,
        "rescored_mean": float(np.mean(held)),
        "rescored_worst": float(max(held)),
        "nested_mean": float(np.mean(spread["selected nCV"])),
        "helps": bool(helps),
    }
    if args.write_weights:
        document = {
            "version": SecondPassWeights.VERSION,
            "model": "base",
            "family": family,
            "weights": weights_dict(final),
            "fitted_by": "scripts/eval_second_pass.py",
            "fitted_on": {"utterances": len(rows), "sets": sorted({r["set"] for r in rows})},
            "held_out_wer": summary,
        }
        args.write_weights.write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        document = {"table": numbers, "spread": spread, "serving": weights_dict(final), "family": family}
        document |= {"summary": summary, "seconds": seconds, "utterances": len(rows)}
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
