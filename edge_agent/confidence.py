"""P(result is wrong) from decoding statistics: small logistic models fitted on labelled audio.

Three models share one versioned calibration file (``edge_agent/calibration/*.json``):
``final`` scores a finished edge decode, ``pilot`` scores a decode of partial audio (used for early
escalation and for stopping a hopeless final decode), ``cloud`` scores a cloud hypothesis, so the edge
can choose between the two results per utterance on the same scale.

Two optional models decide by what escalating would gain instead (``edge-agent calibrate --route``):
``route`` gives P(the cloud's text has fewer errors than the edge's) from the edge's decode alone, and
escalation ranks utterances by it (an utterance the edge gets wrong is worth sending only when the cloud
is likely to do better: in heavy noise both fail); ``pick`` gives the same probability from the edge's
and the cloud's features together, and keeps the cloud's text when it is above one half.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein

from edge_agent.asr.interface import Decoded, TokenInfo

log = logging.getLogger(__name__)
CALIBRATION_VERSION = 1
EDGE_FEATURES = (
    "mean_logprob",
    "min_logprob",
    "mean_entropy",
    "max_entropy",
    "tokens_per_s",
    "pilot_agreement",
    "speech_ratio",
    "log_duration",
    "unfinished",
    "repetition",
)
CLOUD_FEATURES = (
    "avg_logprob",
    "no_speech_prob",
    "words_per_s",
    "log_duration",
    "edge_agreement",
    "repetition",
)


PICK_FEATURES = tuple(f"edge_{f}" for f in EDGE_FEATURES) + tuple(f"cloud_{f}" for f in CLOUD_FEATURES)


def pick_features(edge: dict[str, float], cloud: dict[str, float]) -> dict[str, float]:
    """The ``pick`` model's input: an utterance's edge and cloud features side by side."""
    return {f"edge_{k}": v for k, v in edge.items()} | {f"cloud_{k}": v for k, v in cloud.items()}


def repetition(items: Sequence[object], n: int = 3) -> float:
    """Share of repeated n-grams: decoders stuck in a loop on noise score high."""
    grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def edge_features(
    tokens: Sequence[TokenInfo],
    duration_s: float,
    speech_ratio: float,
    pilot_agreement: float = 1.0,
    finished: bool = True,
) -> dict[str, float]:
    """Features of one edge decode. ``pilot_agreement``: share of the latest pilot's tokens the
    final kept (1.0 without a pilot); ``speech_ratio``: VAD speech windows over all windows."""
    logprobs = [t.logprob for t in tokens] or [-10.0]
    entropies = [t.entropy for t in tokens] or [10.0]
    duration = max(duration_s, 0.1)
    return {
        "mean_logprob": float(np.mean(logprobs)),
        "min_logprob": float(min(logprobs)),
        "mean_entropy": float(np.mean(entropies)),
        "max_entropy": float(max(entropies)),
        "tokens_per_s": len(tokens) / duration,
        "pilot_agreement": pilot_agreement,
        "speech_ratio": speech_ratio,
        "log_duration": math.log(duration),
        "unfinished": 0.0 if finished else 1.0,
        "repetition": repetition([t.id for t in tokens]),
    }


def pilot_agreement(decoded: Decoded, previous: Decoded | None, verifies: bool) -> float:
    """Share of the previous pilot's tokens ``decoded`` kept; 1.0 without a pilot, or when the model does
    not verify pilots (``Capabilities.prefix_verification``: its hypotheses only grow)."""
    if not verifies or previous is None or not previous.ids:
        return 1.0
    return decoded.reused_tokens / len(previous.ids)


def cloud_features(
    avg_logprob: float, no_speech_prob: float, text: str, duration_s: float, edge_agreement: float
) -> dict[str, float]:
    """Features of a cloud hypothesis; ``edge_agreement`` is 1 - word error rate between the two texts."""
    duration = max(duration_s, 0.1)
    words = text.casefold().split()
    return {
        "avg_logprob": avg_logprob,
        "no_speech_prob": no_speech_prob,
        "words_per_s": len(words) / duration,
        "log_duration": math.log(duration),
        "edge_agreement": edge_agreement,
        "repetition": repetition(words),
    }


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word edit distance over the reference length, on casefolded words without punctuation."""
    ref, hyp = text_words(reference), text_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(Levenshtein.distance(ref, hyp)) / len(ref)


def text_words(text: str) -> list[str]:
    """Casefolded words without punctuation, for word edit distances."""
    return ["".join(c for c in w.casefold() if c.isalnum() or c == "'") for w in text.split()]


@dataclass(frozen=True)
class LogisticModel:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def probability(self, values: dict[str, float]) -> float:
        x = np.array([values[name] for name in self.features], dtype=np.float64)
        z = (x - np.array(self.mean)) / np.array(self.scale)
        logit = float(np.dot(z, np.array(self.weights)) + self.bias)
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))

    def to_json(self) -> dict[str, object]:
        return {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "bias": self.bias,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LogisticModel:
        def floats(key: str) -> tuple[float, ...]:
            value = data[key]
            assert isinstance(value, list)
            return tuple(float(v) for v in value)

        features = data["features"]
        assert isinstance(features, list)
        bias = data["bias"]
        assert isinstance(bias, int | float)
        return cls(
            tuple(str(f) for f in features), floats("mean"), floats("scale"), floats("weights"), float(bias)
        )


def fit_logistic(
    rows: Sequence[dict[str, float]], labels: Sequence[float], features: Sequence[str], l2: float = 1e-2
) -> LogisticModel:
    """L2-regularized logistic regression by Newton's method (a few features, a few hundred rows). Labels
    may be fractional (cross-entropy against a soft target, e.g. a clip's word error rate)."""
    x = np.array([[row[f] for f in features] for row in rows], dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # the bias is not shrunk
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        grad = z.T @ (p - y) / len(y) + reg * w
        hess = (z.T * (p * (1 - p))) @ z / len(y) + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LogisticModel(tuple(features), tuple(mean), tuple(scale), tuple(w[:-1]), float(w[-1]))


def hypothesis_features(
    avg_logprob: float, no_speech_prob: float, text: str, edge_text: str, duration_s: float
) -> dict[str, float]:
    """``cloud_features`` of a cloud hypothesis, its agreement measured against the edge's text."""
    agreement = 1.0 - min(1.0, word_error_rate(edge_text, text))
    return cloud_features(avg_logprob, no_speech_prob, text, duration_s, agreement)


def cloud_p_wrong(
    model: LogisticModel,
    avg_logprob: float,
    no_speech_prob: float,
    text: str,
    edge_text: str,
    duration_s: float,
) -> float:
    """P(cloud hypothesis wrong), on the same scale as the edge's, so the two can be compared."""
    return model.probability(hypothesis_features(avg_logprob, no_speech_prob, text, edge_text, duration_s))


def cloud_beats_edge(
    model: LogisticModel,
    edge: dict[str, float],
    avg_logprob: float,
    no_speech_prob: float,
    text: str,
    edge_text: str,
    duration_s: float,
) -> float:
    """P(the cloud's text has fewer errors than the edge's), by a ``pick`` model; ``edge``: the edge
    decode's features."""
    cloud = hypothesis_features(avg_logprob, no_speech_prob, text, edge_text, duration_s)
    return model.probability(pick_features(edge, cloud))


@dataclass(frozen=True)
class Calibration:
    version: int
    final: LogisticModel
    pilot: LogisticModel
    cloud: LogisticModel
    threshold: float
    """Default escalation threshold on the final model's P(wrong)."""
    early_threshold: float
    """Threshold on the pilot model's P(wrong) for escalating before end of speech."""
    stop_threshold: float
    """Threshold on the pilot model's P(wrong) for abandoning a final decode."""
    score_quantiles: tuple[float, ...]
    """The final model's P(wrong) at percentiles 0..100 on the calibration set (offload targeting)."""
    source: str = ""
    model: str = ""
    """Name of the edge model the edge models were fitted on (``AsrModel.name``); empty if unrecorded."""
    route: LogisticModel | None = None
    """P(cloud beats edge) from the edge's features; when present, ``threshold`` and ``score_quantiles``
    are on its scale and escalation follows it."""
    pick: LogisticModel | None = None
    """P(cloud beats edge) from both sides' features (``pick_features``); chooses the text when present."""

    def escalation_score(self, features: dict[str, float]) -> float:
        """What the escalation threshold applies to: P(cloud beats edge) with a ``route`` model, else
        P(edge wrong)."""
        return (self.route or self.final).probability(features)

    def threshold_for_offload(self, rate: float) -> float:
        """The threshold at which about ``rate`` of calibration utterances escalate."""
        q = np.asarray(self.score_quantiles)
        return float(np.interp(100.0 * (1.0 - rate), np.linspace(0, 100, len(q)), q))

    def save(self, path: Path) -> None:
        data = {
            "version": self.version,
            "final": self.final.to_json(),
            "pilot": self.pilot.to_json(),
            "cloud": self.cloud.to_json(),
            "threshold": self.threshold,
            "early_threshold": self.early_threshold,
            "stop_threshold": self.stop_threshold,
            "score_quantiles": list(self.score_quantiles),
            "source": self.source,
            "model": self.model,
        }
        for name, extra in (("route", self.route), ("pick", self.pick)):
            if extra is not None:
                data[name] = extra.to_json()
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | None = None) -> Calibration:
        """Load a calibration file (default: the one shipped for Moonshine base)."""
        return cls._parse(Path(path).read_text() if path is not None else _shipped("offramp-v1.json"))

    @classmethod
    def for_model(cls, model_name: str, path: Path | None = None) -> Calibration:
        """The calibration to use with ``model_name``: ``path`` if it was fitted on that model, else the
        file shipped for it. A file fitted on another model would put the thresholds in the wrong place,
        so it is replaced by the shipped one with a warning."""
        from edge_agent.asr.registry import family_calibration, shipped_calibration

        shipped = shipped_calibration(model_name)
        if path is not None:
            chosen = cls.load(path)
            if not chosen.model:
                log.warning(
                    "calibration %s does not record its edge model; using it for %s", path, model_name
                )
                return chosen
            if chosen.model == model_name:
                return chosen
            if shipped is None:
                raise ValueError(
                    f"calibration {path} was fitted on {chosen.model}, not {model_name}, and no calibration "
                    f"ships for {model_name}: fit one with `edge-agent calibrate`"
                )
            log.warning(
                "calibration %s was fitted on %s, not %s: using the one shipped for %s instead",
                path, chosen.model, model_name, model_name,
            )  # fmt: skip
        if shipped is None:
            fallback = family_calibration(model_name)
            if fallback is None:
                raise ValueError(
                    f"no calibration ships for edge model {model_name}: fit one with `edge-agent calibrate`"
                )
            log.warning(
                "no calibration fitted on %s: using %s, fitted on its family's bundled model; its thresholds "
                "may not suit this model (fit one with `edge-agent calibrate`)", model_name, fallback,
            )  # fmt: skip
            shipped = fallback
        return cls._parse(_shipped(shipped))

    @classmethod
    def _parse(cls, text: str) -> Calibration:
        data = json.loads(text)
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {data.get('version')} is not {CALIBRATION_VERSION}")
        return cls(
            version=CALIBRATION_VERSION,
            final=LogisticModel.from_json(data["final"]),
            pilot=LogisticModel.from_json(data["pilot"]),
            cloud=LogisticModel.from_json(data["cloud"]),
            threshold=float(data["threshold"]),
            early_threshold=float(data["early_threshold"]),
            stop_threshold=float(data["stop_threshold"]),
            score_quantiles=tuple(float(v) for v in data["score_quantiles"]),
            source=str(data.get("source", "")),
            model=str(data.get("model", "")),
            route=LogisticModel.from_json(data["route"]) if "route" in data else None,
            pick=LogisticModel.from_json(data["pick"]) if "pick" in data else None,
        )


def _shipped(name: str) -> str:
    return (resources.files("edge_agent") / "calibration" / name).read_text()
