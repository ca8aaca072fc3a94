"""Fit the confidence models and thresholds on labelled audio: ``edge-agent calibrate MANIFEST...``.

For every clip, through the edge model's stream interface (any ``EDGE_MODEL``): a stream takes a
seeded 55-80 % prefix and advances (the pilot), then the rest and finalizes (the final, verifying the
pilot), and a running cloud (``--cloud-target``, default ``EDGE_CLOUD_TARGET``) decodes the clip over
gRPC. Labels: a result is wrong when its normalized text differs from the reference. Three logistic
models are fitted (final, pilot, cloud) and the default threshold is the one that minimizes the
simulated hybrid WER with at most ``--max-offload`` of utterances escalated. The file records the edge
model it was fitted on. Needs the bench extras (jiwer, whisper-normalizer).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.cloud_reference import CloudAnswer, CloudReference
from edge_agent.confidence import (
    CALIBRATION_VERSION,
    CLOUD_FEATURES,
    EDGE_FEATURES,
    PICK_FEATURES,
    Calibration,
    LogisticModel,
    cloud_features,
    edge_features,
    fit_logistic,
    pick_features,
    pilot_agreement,
)
from edge_agent.settings import EdgeSettings

log = logging.getLogger(__name__)
DEFAULT_OUT = Path(__file__).parent / "calibration" / "offramp-v1.json"


@dataclass
class Row:
    manifest: str
    kind: str
    reference: str
    edge_text: str
    cloud_text: str
    edge_errors: int
    cloud_errors: int
    words: int
    final: dict[str, float]
    pilot: dict[str, float]
    cloud: dict[str, float]
    model: str = ""
    """The edge model that decoded the clip."""
    voice: str = ""
    """The manifest's ``voice`` of the clip (for fits cross-validated by voice)."""


def _load(manifest: Path) -> list[dict[str, object]]:
    rows = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        row["audio_filepath"] = str(manifest.parent / row["audio_filepath"])
        rows.append(row)
    return rows


def cloud_answers(rows: list[Row]) -> dict[tuple[str, str, str], CloudAnswer]:
    """The cloud's answers recorded in an earlier features file, by (manifest, kind, reference): they do
    not depend on the edge model, so recalibrating another edge model need not run Whisper again. Keys
    that occur twice are left out (decoded again)."""
    seen: dict[tuple[str, str, str], CloudAnswer] = {}
    twice: set[tuple[str, str, str]] = set()
    for r in rows:
        key = (r.manifest, r.kind, r.reference)
        if key in seen:
            twice.add(key)
        seen[key] = (r.cloud_text, float(r.cloud["avg_logprob"]), float(r.cloud["no_speech_prob"]))
    return {k: v for k, v in seen.items() if k not in twice}


def collect(
    manifests: list[Path],
    settings: EdgeSettings,
    cloud: CloudReference | None,
    seed: int = 7,
    known: dict[tuple[str, str, str], CloudAnswer] | None = None,
) -> list[Row]:
    import jiwer
    import soundfile as sf
    from whisper_normalizer.english import EnglishTextNormalizer

    from edge_agent.asr.registry import load_model
    from edge_agent.audio.vad import SileroVad

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    normalize = EnglishTextNormalizer()
    model = load_model(settings)
    vad = SileroVad()

    def ask_cloud(audio: np.ndarray) -> CloudAnswer:
        if cloud is None:
            raise SystemExit("no cloud to ask: pass --cloud-target HOST:PORT of a running cloud-server")
        return cloud.ask(audio)

    rng = np.random.default_rng(seed)
    out: list[Row] = []

    def errors(ref: str, hyp: str) -> int:
        r, h = normalize(ref), normalize(hyp)
        if not r.split():
            return len(h.split())
        o = jiwer.process_words(r, h)
        return int(o.substitutions + o.deletions + o.insertions)

    for manifest in manifests:
        for item in _load(manifest):
            audio, rate = sf.read(str(item["audio_filepath"]), dtype="float32")
            if rate != 16000:
                raise SystemExit(f"{item['audio_filepath']}: calibration audio must be 16 kHz")
            duration = len(audio) / 16000
            probs = vad.create_stream().accept(audio)
            speech_ratio = float(np.mean(np.asarray(probs) >= settings.vad_threshold)) if probs else 0.0
            cut = int(len(audio) * rng.uniform(0.55, 0.8))
            stream = model.create_stream()
            stream.accept(audio[:cut])
            pilot = stream.advance(lambda: False)
            assert pilot is not None  # only a waiting final makes a stream give way
            stream.accept(audio[cut:])
            final = stream.finalize()
            agreement = pilot_agreement(final, pilot, model.capabilities.prefix_verification)
            reference = str(item["text"])
            key = (manifest.parent.name, str(item.get("kind", "")), reference)
            cloud_text, avg_logprob, no_speech_prob = (known or {}).get(key) or ask_cloud(audio)
            edge_errors, cloud_errors = errors(reference, final.text), errors(reference, cloud_text)
            edge_vs_cloud = errors(final.text, cloud_text) / max(1, len(normalize(final.text).split()))
            out.append(
                Row(
                    manifest=manifest.parent.name,
                    kind=str(item.get("kind", "")),
                    reference=reference,
                    edge_text=final.text,
                    cloud_text=cloud_text,
                    edge_errors=edge_errors,
                    cloud_errors=cloud_errors,
                    words=len(normalize(reference).split()),
                    final=edge_features(final.tokens, duration, speech_ratio, agreement, final.finished),
                    pilot=edge_features(pilot.tokens, cut / 16000, speech_ratio, 1.0, True),
                    cloud=cloud_features(
                        avg_logprob,
                        no_speech_prob,
                        cloud_text,
                        duration,
                        1.0 - min(1.0, edge_vs_cloud),
                    ),
                    model=model.name,
                    voice=str(item.get("voice", "")),
                )
            )
            log.info("%s edge=%d cloud=%d errors: %s", Path(str(item["audio_filepath"])).name,
                     edge_errors, cloud_errors, final.text)  # fmt: skip
    return out


def simulate(
    rows: list[Row], p_final: np.ndarray, p_cloud: np.ndarray, threshold: float
) -> tuple[float, float]:
    """(hybrid WER, offload rate) when escalating above ``threshold`` and choosing by P(wrong)."""
    return simulate_choice(rows, p_final, p_cloud < p_final, threshold)


def simulate_choice(
    rows: list[Row], scores: np.ndarray, take_cloud: np.ndarray, threshold: float
) -> tuple[float, float]:
    """(hybrid WER, offload rate) when escalating the rows whose ``scores`` are above ``threshold`` and
    keeping the cloud's text of those where ``take_cloud``."""
    errors = 0
    escalated = 0
    for row, score, cloud in zip(rows, scores, take_cloud, strict=True):
        if score > threshold:
            escalated += 1
            errors += row.cloud_errors if cloud else row.edge_errors
        else:
            errors += row.edge_errors
    words = sum(r.words for r in rows) or 1
    return errors / words, escalated / max(1, len(rows))


def _best_threshold(
    rows: list[Row], scores: np.ndarray, take_cloud: np.ndarray, max_offload: float
) -> tuple[float, float, float]:
    """(hybrid WER, threshold, offload) of the threshold with the lowest WER within ``max_offload``."""
    best = (float("inf"), 1.0, 0.0)
    for t in np.unique(np.concatenate([scores, [1.0]])):
        wer, offload = simulate_choice(rows, scores, take_cloud, float(t))
        if offload <= max_offload and wer < best[0] - 1e-12:
            best = (wer, float(t), offload)
    return best


def fit_route(rows: list[Row]) -> tuple[LogisticModel, LogisticModel]:
    """The ``route`` and ``pick`` models: P(the cloud's text has fewer errors than the edge's), from the
    edge's final features, and from both sides' features (fitted on the clips where the two texts'
    error counts differ, the only ones where the pick matters)."""
    route = fit_logistic(
        [r.final for r in rows], [float(r.cloud_errors < r.edge_errors) for r in rows], EDGE_FEATURES
    )
    differ = [r for r in rows if r.cloud_errors != r.edge_errors] or rows
    pick = fit_logistic(
        [pick_features(r.final, r.cloud) for r in differ],
        [float(r.cloud_errors < r.edge_errors) for r in differ],
        PICK_FEATURES,
    )
    return route, pick


def _threshold_at_precision(scores: np.ndarray, wrong: np.ndarray, precision: float, floor: float) -> float:
    """Lowest threshold whose flagged set is at least ``precision`` wrong (or the top score)."""
    for t in np.unique(scores):
        flagged = scores > t
        if flagged.sum() >= 3 and wrong[flagged].mean() >= precision:
            return float(max(t, floor))
    return float(max(scores.max(), floor))


def targets(rows: list[Row], labels: str) -> tuple[list[float], list[float]]:
    """(edge, cloud) targets per clip: ``binary`` 1 when the text has any error; ``wer`` the clip's word
    error rate capped at 1, for a weak model that errs on nearly every clip (binary labels are then
    nearly all 1 and cannot rank clips; the error rate still can)."""
    if labels == "binary":
        return [float(r.edge_errors > 0) for r in rows], [float(r.cloud_errors > 0) for r in rows]
    if labels == "wer":
        return (
            [min(1.0, r.edge_errors / max(1, r.words)) for r in rows],
            [min(1.0, r.cloud_errors / max(1, r.words)) for r in rows],
        )
    raise ValueError(f"labels must be binary or wer, not {labels!r}")


def fit(
    rows: list[Row], max_offload: float, source: str, labels: str = "binary", route: bool = False
) -> tuple[Calibration, dict[str, float]]:
    """The confidence models and thresholds. ``route``: also the ``route`` and ``pick`` models
    (``fit_route``), and the escalation threshold on the route model's scale."""
    edge_models = {r.model for r in rows}
    if len(edge_models) > 1:
        raise SystemExit(
            f"the features come from several edge models ({', '.join(sorted(edge_models))}): fit one"
        )
    edge_target, cloud_target = targets(rows, labels)
    final = fit_logistic([r.final for r in rows], edge_target, EDGE_FEATURES)
    pilot = fit_logistic([r.pilot for r in rows], edge_target, EDGE_FEATURES)
    cloud = fit_logistic([r.cloud for r in rows], cloud_target, CLOUD_FEATURES)
    p_final = np.array([final.probability(r.final) for r in rows])
    p_pilot = np.array([pilot.probability(r.pilot) for r in rows])
    p_cloud = np.array([cloud.probability(r.cloud) for r in rows])
    wer, threshold, offload = _best_threshold(rows, p_final, p_cloud < p_final, max_offload)
    # Early escalation and stopping a final need a precise "the edge will lose": with binary labels, any
    # error; with error-rate labels (nearly every clip has one), more errors than the cloud makes.
    wrong = np.asarray(
        [r.edge_errors > (0 if labels == "binary" else r.cloud_errors) for r in rows], dtype=bool
    )
    early = _threshold_at_precision(p_pilot, wrong, 0.8, threshold)
    stop = _threshold_at_precision(p_pilot, wrong, 0.95, early)
    models: tuple[LogisticModel, LogisticModel] | None = fit_route(rows) if route else None
    scores = p_final
    if models is not None:
        scores = np.array([models[0].probability(r.final) for r in rows])
        take = np.array([models[1].probability(pick_features(r.final, r.cloud)) > 0.5 for r in rows])
        wer, threshold, offload = _best_threshold(rows, scores, take, max_offload)
    words = sum(r.words for r in rows) or 1
    report = {
        "utterances": float(len(rows)),
        "edge_wer": sum(r.edge_errors for r in rows) / words,
        "cloud_wer": sum(r.cloud_errors for r in rows) / words,
        "oracle_wer": sum(min(r.edge_errors, r.cloud_errors) for r in rows) / words,
        "hybrid_wer": wer,
        "offload": offload,
        "threshold": threshold,
        "early_threshold": early,
        "stop_threshold": stop,
        "early_rate": float(np.mean(p_pilot > early)),
    }
    calibration = Calibration(
        version=CALIBRATION_VERSION,
        final=final,
        pilot=pilot,
        cloud=cloud,
        threshold=threshold,
        early_threshold=early,
        stop_threshold=stop,
        score_quantiles=tuple(float(q) for q in np.percentile(scores, np.linspace(0, 100, 101))),
        source=source,
        model=next(iter(edge_models), ""),
        route=models[0] if models else None,
        pick=models[1] if models else None,
    )
    return calibration, report


def _rows_to_json(rows: list[Row]) -> str:
    return "".join(json.dumps(r.__dict__) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="edge-agent calibrate", description=__doc__)
    parser.add_argument("manifests", nargs="*", type=Path, help="NeMo manifests (16 kHz audio)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="calibration file to write")
    parser.add_argument("--features", type=Path, help="read/write the per-clip features here (JSON lines)")
    parser.add_argument(
        "--cloud-target",
        help="host:port of a running cloud-server's gRPC API that decodes every clip (default: "
        "EDGE_CLOUD_TARGET; TLS and API key from the EDGE_CLOUD_* settings)",
    )
    parser.add_argument(
        "--cloud-from",
        type=Path,
        help="a features file of an earlier run on the same manifests: take the cloud's answers from it",
    )
    parser.add_argument("--max-offload", type=float, default=0.25)
    parser.add_argument(
        "--route",
        action="store_true",
        help="also fit the route and pick models: escalate by P(the cloud beats the edge), and keep the "
        "text a model of both sides' features prefers",
    )
    parser.add_argument(
        "--labels",
        choices=("binary", "wer"),
        default="binary",
        help="what the confidence models predict: P(any word wrong), or the expected share of words wrong",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.manifests:
        known = None
        if args.cloud_from is not None:
            known = cloud_answers([Row(**json.loads(x)) for x in args.cloud_from.read_text().splitlines()])
        settings = EdgeSettings()
        target = args.cloud_target or settings.cloud_target
        cloud = CloudReference(settings, target) if target else None
        try:
            rows = collect(args.manifests, settings, cloud, known=known)
        finally:
            if cloud is not None:
                cloud.close()
        if args.features:
            args.features.write_text(_rows_to_json(rows))
    elif args.features and args.features.exists():
        rows = [Row(**json.loads(line)) for line in args.features.read_text().splitlines()]
    else:
        raise SystemExit("give manifests, or --features from an earlier run")
    source = ", ".join(sorted({r.manifest for r in rows})) + f"; {len(rows)} utterances"
    calibration, report = fit(rows, args.max_offload, source, args.labels, args.route)
    calibration.save(args.out)
    print(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


__all__ = ["LogisticModel", "main"]
