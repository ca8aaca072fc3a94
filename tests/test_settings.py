from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloud_server.cli import load_settings
from cloud_server.settings import CloudSettings


def test_env_prefix_and_cli_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_PORT", "9001")
    monkeypatch.setenv("CLOUD_MAX_QUEUE", "3")
    monkeypatch.setenv("CLOUD_API_KEY", "zq-secret-91")
    settings = load_settings(["--port", "9002"])
    assert settings.port == 9002  # flag beats env
    assert settings.max_queue == 3  # env beats default
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "zq-secret-91"
    assert "zq-secret-91" not in repr(settings)


def test_bounds_are_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_WORKERS", "0")
    with pytest.raises(ValidationError):
        CloudSettings()


def test_every_field_is_documented() -> None:
    for name, field in CloudSettings.model_fields.items():
        assert field.description, f"{name} has no docstring"


def test_edge_settings_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.cli import load_settings as edge_load
    from edge_agent.settings import EdgeSettings

    monkeypatch.setenv("EDGE_PORT", "9100")
    monkeypatch.setenv("EDGE_MIN_SILENCE_MS", "700")
    settings, mic = edge_load(["--port", "9200", "--cloud-target", "", "--no-pilot"])
    assert settings.port == 9200 and settings.min_silence_ms == 700
    assert settings.cloud_target == "" and settings.pilot is False and mic is False
    for name, field in EdgeSettings.model_fields.items():
        assert field.description, f"{name} has no docstring"
