from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ThreadedCloud, cloud_settings
from tests.speech import Clip, load_manifest

ROOT = Path(__file__).resolve().parent.parent
AUDIO_DIR = ROOT / ".cache" / "test-audio"
MODEL_CACHE = ROOT / ".cache" / "models"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """Real and synthetic labelled speech, built once from registry packages."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_test_audio

    build_test_audio.build_pocketsphinx(AUDIO_DIR)
    build_test_audio.build_tts(AUDIO_DIR)
    build_test_audio.build_long(AUDIO_DIR)
    return AUDIO_DIR


@pytest.fixture(scope="session")
def real_clips(audio_dir: Path) -> list[Clip]:
    return load_manifest(audio_dir / "pocketsphinx" / "manifest.jsonl")


@pytest.fixture(scope="session")
def tts_clips(audio_dir: Path) -> list[Clip]:
    return load_manifest(audio_dir / "tts" / "manifest.jsonl")


@pytest.fixture(scope="session")
def long_clip(audio_dir: Path) -> Clip:
    return load_manifest(audio_dir / "long" / "manifest.jsonl")[0]


@pytest.fixture(scope="session")
def model_cache() -> str:
    return str(MODEL_CACHE)


@pytest.fixture(scope="session")
def cloud(model_cache: str) -> Iterator[ThreadedCloud]:
    """The default cloud server (Whisper base), loaded once per session."""
    server = ThreadedCloud(cloud_settings(model_cache, max_audio_s=120, max_upload_mb=5)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def edge_model() -> object:
    """Moonshine base with the rebuilt graphs, loaded once per session."""
    from edge_agent.asr.registry import load_model
    from edge_agent.settings import EdgeSettings

    return load_model(EdgeSettings(model_cache_dir=ROOT / ".cache" / "edge-models"))
