"""Edge model families, chosen by one setting: ``EDGE_MODEL=family`` or ``family:/path/to/model/dir``.

Adding a family is one entry in ``FAMILIES``: how to load it and which calibration file ships for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.asr.interface import AsrModel
    from edge_agent.settings import EdgeSettings


@dataclass(frozen=True)
class ModelSpec:
    family: str
    path: Path | None = None
    """A model directory given after the colon (None: the family's bundled model)."""

    def __str__(self) -> str:
        return self.family if self.path is None else f"{self.family}:{self.path}"


@dataclass(frozen=True)
class Family:
    load: Callable[[ModelSpec, EdgeSettings], AsrModel]
    calibration: str
    """File name of the calibration shipped for this family's bundled model (``edge_agent/calibration``)."""
    model_name: str
    """``AsrModel.name`` of the bundled model (what shipped calibrations record)."""
    variants: tuple[tuple[str, str], ...] = ()
    """(name suffix, calibration file) for the bundled model's other decoders: a hybrid conformer run
    with its transducer head is named ``<model_name>+rnnt`` and has confidences of its own."""

    def calibration_for(self, suffix: str) -> str | None:
        return self.calibration if not suffix else dict(self.variants).get(suffix)


def _load_moonshine(spec: ModelSpec, settings: EdgeSettings) -> AsrModel:
    from edge_agent.asr.moonshine.stream import load_moonshine, prebuilt_graphs

    def load(s: ModelSpec) -> AsrModel:
        return load_moonshine(
            s.path or settings.model_dir,
            Path(settings.model_cache_dir),
            settings.intra_op_threads,
            settings.max_chunk_s,
            settings.hotword_bonus,
        )

    source = spec.path or settings.model_dir
    # The shipped .ort layout is quantized once into the cache (EDGE_QUANTIZATION); a directory of
    # ONNX graphs (what `edge-agent quantize` writes) is served as it is.
    if settings.quantization != "none" and (source is None or prebuilt_graphs(source) is None):
        from edge_agent.quantize import ensure_quantized

        built = ensure_quantized(
            ModelSpec("moonshine", source), settings.quantization, Path(settings.model_cache_dir), load
        )
        if built is not None:
            return load(ModelSpec("moonshine", built))
    return load(spec)


def _load_conformer(spec: ModelSpec, settings: EdgeSettings) -> AsrModel:
    from edge_agent.asr.conformer.stream import load_conformer

    return load_conformer(
        spec.path, settings.intra_op_threads, settings.conformer_head, settings.hotword_bonus
    )


FAMILIES: dict[str, Family] = {
    "moonshine": Family(_load_moonshine, "offramp-v1.json", "moonshine-base"),
    "conformer": Family(
        _load_conformer,
        "offramp-conformer-v1.json",
        "conformer-small",
        variants=(("+rnnt", "offramp-conformer-rnnt-v1.json"),),
    ),
}


def parse_model_spec(value: str) -> ModelSpec:
    """``moonshine`` | ``moonshine:/dir`` | (any registered family)[``:/dir``]. Raises ValueError."""
    family, sep, path = value.strip().partition(":")
    family = family.strip().lower()
    if family not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(
            f"unknown edge model family {family!r}; available: {known} (optionally family:/path)"
        )
    if sep and not path.strip():
        raise ValueError(f"{value!r}: give a model directory after the colon, or just {family!r}")
    return ModelSpec(family, Path(path.strip()).expanduser() if sep else None)


def load_model(settings: EdgeSettings) -> AsrModel:
    """Load the edge model ``settings.model`` names."""
    spec = parse_model_spec(settings.model)
    if spec.path is not None and not spec.path.is_dir():
        raise FileNotFoundError(f"EDGE_MODEL={spec}: {spec.path} is not a directory")
    return FAMILIES[spec.family].load(spec, settings)


def shipped_calibration(model_name: str) -> str | None:
    """The calibration file shipped for a model, by its name; None when none ships for it."""
    for family in FAMILIES.values():
        if model_name.startswith(family.model_name):
            shipped = family.calibration_for(model_name[len(family.model_name) :])
            if shipped is not None:
                return shipped
    return None


def family_calibration(model_name: str) -> str | None:
    """For a user's model of a family (named ``family:dir``): the file shipped for the family's bundled
    model, a starting point until one is fitted on the user's model (``edge-agent calibrate``)."""
    family, sep, rest = model_name.partition(":")
    if not sep or family not in FAMILIES:
        return None
    known = FAMILIES[family]
    for suffix, _ in known.variants:
        if rest.endswith(suffix):
            return known.calibration_for(suffix)
    return known.calibration
