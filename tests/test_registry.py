"""Choosing the edge model (``EDGE_MODEL``) and the calibration that goes with it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.asr.registry import (
    ModelSpec,
    family_calibration,
    load_model,
    parse_model_spec,
    shipped_calibration,
)
from edge_agent.confidence import Calibration
from edge_agent.settings import EdgeSettings
from tests.fake_asr import write_calibration


def test_model_spec_forms() -> None:
    assert parse_model_spec("moonshine") == ModelSpec("moonshine")
    assert parse_model_spec(" Moonshine ") == ModelSpec("moonshine")
    assert parse_model_spec("moonshine:/opt/models/base") == ModelSpec("moonshine", Path("/opt/models/base"))
    assert str(parse_model_spec("moonshine:/opt/m")) == "moonshine:/opt/m"


@pytest.mark.parametrize("value", ["whisper", "", "moonshine:", "moonshine: "])
def test_bad_model_specs_are_refused_with_a_message(value: str) -> None:
    with pytest.raises(ValueError, match="moonshine"):
        parse_model_spec(value)


def test_settings_validate_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MODEL", "nosuchmodel")
    with pytest.raises(ValidationError, match="unknown edge model family 'nosuchmodel'"):
        EdgeSettings()
    monkeypatch.setenv("EDGE_MODEL", "moonshine")
    assert EdgeSettings().model == "moonshine"


def test_a_missing_model_directory_is_named(tmp_path: Path) -> None:
    settings = EdgeSettings(model=f"moonshine:{tmp_path / 'absent'}")
    with pytest.raises(FileNotFoundError, match="absent is not a directory"):
        load_model(settings)


def test_shipped_calibration_records_its_model() -> None:
    assert shipped_calibration("moonshine-base") == "offramp-v1.json"
    assert shipped_calibration("fake") is None
    assert Calibration.load().model == "moonshine-base"


def test_each_head_of_the_bundled_conformer_has_its_calibration() -> None:
    assert shipped_calibration("conformer-small") == "offramp-conformer-v1.json"
    assert shipped_calibration("conformer-small+rnnt") == "offramp-conformer-rnnt-v1.json"
    assert shipped_calibration("conformer-small+tdt") is None
    # A user's export starts from the bundled model's calibration for the same head.
    assert family_calibration("conformer:my-export") == "offramp-conformer-v1.json"
    assert family_calibration("conformer:my-export+rnnt") == "offramp-conformer-rnnt-v1.json"
    assert family_calibration("conformer-small") is None


def test_calibration_of_another_model_falls_back_to_the_shipped_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = write_calibration(tmp_path / "other.json", model="some-conformer")
    with caplog.at_level(logging.WARNING, logger="edge_agent.confidence"):
        chosen = Calibration.for_model("moonshine-base", other)
    assert chosen == Calibration.load()
    assert "fitted on some-conformer, not moonshine-base" in caplog.text
    own = write_calibration(tmp_path / "own.json", model="moonshine-base")
    assert Calibration.for_model("moonshine-base", own).threshold == 0.5  # its own, not the shipped one
    with pytest.raises(ValueError, match="no calibration ships for fake"):
        Calibration.for_model("fake", other)
    assert Calibration.for_model("fake", write_calibration(tmp_path / "fake.json")).source == "scripted"


def test_calibration_without_a_model_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_calibration(tmp_path / "old.json")
    data = json.loads(path.read_text())
    del data["model"]
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="edge_agent.confidence"):
        chosen = Calibration.for_model("moonshine-base", path)
    assert chosen.source == "scripted" and "does not record its edge model" in caplog.text
    saved = tmp_path / "saved.json"
    chosen.save(saved)
    assert json.loads(saved.read_text())["model"] == ""
