"""``EDGE_MODEL=conformer`` end to end: a real edge agent on a socket, real WebSocket clients, the bundled
conformer, and a real cloud server for escalation."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.asr.conformer.stream import ConformerRecognizer
from edge_agent.asr.registry import load_model
from edge_agent.settings import EdgeSettings
from tests.edge_client import EdgeClient, pcm16
from tests.servers import ThreadedCloud, ThreadedEdge, edge_settings
from tests.speech import Clip, wer
from tests.test_edge_stream import _noisy

pytestmark = pytest.mark.model
RATE = 16000
PATIENT_S = 60.0  # a cloud deadline no loaded machine misses


@pytest.fixture(scope="module")
def conformer() -> ConformerRecognizer:
    model = load_model(EdgeSettings(model="conformer"))
    assert isinstance(model, ConformerRecognizer)
    return model


@pytest.fixture()
def edge_only(conformer: ConformerRecognizer, tmp_path: Path) -> Iterator[ThreadedEdge]:
    server = ThreadedEdge(edge_settings(tmp_path, None, model="conformer"), conformer).start()
    yield server
    server.stop()


def _speech(clips: list[Clip], gap_s: float = 1.2) -> tuple[np.ndarray, list[float]]:
    """Clips separated by silence, as a microphone would send them; returns the audio and speech ends."""
    parts, ends, at = [np.zeros(int(0.5 * RATE), np.float32)], [], 0.5
    for clip in clips:
        audio = clip.samples()
        parts += [audio, np.zeros(int(gap_s * RATE), np.float32)]
        at += len(audio) / RATE
        ends.append(at)
        at += gap_s
    return np.concatenate(parts), ends


def test_websocket_stream_gives_partials_then_finals(edge_only: ThreadedEdge, tts_clips: list[Clip]) -> None:
    clips = tts_clips[:4]
    audio, _ = _speech(clips)
    client = EdgeClient(edge_only.url)
    assert client.start()["type"] == "ready"
    client.send_audio(pcm16(audio), frame_bytes=3200, realtime_rate=4 * 2 * RATE)
    events = client.stop()
    finals = client.of("final")
    assert len(finals) == len(clips)
    assert events[-1] == {"type": "end", "utterances": len(finals)}
    hyps = [f["text"] for f in finals]
    assert wer([c.text for c in clips], hyps) < 0.9, hyps  # see test_conformer_stream.WER_LIMIT
    for final in finals:
        assert final["source"] == "edge" and not final["escalated"]
        assert 0.0 <= final["confidence"] <= 1.0
        assert final["words"] and all(0.0 < w["confidence"] <= 1.0 for w in final["words"])
    # Partials come from the running hypothesis while audio arrives, and never repeat themselves.
    for final in finals:
        texts = [p["text"] for p in client.of("partial") if p["utterance_id"] == final["utterance_id"]]
        assert texts, final
        assert all(a != b for a, b in itertools.pairwise(texts))


def test_partials_arrive_before_the_speech_ends(edge_only: ThreadedEdge, tts_clips: list[Clip]) -> None:
    clip = max(tts_clips, key=lambda c: c.duration)
    audio, ends = _speech([clip])
    client = EdgeClient(edge_only.url)
    client.start()
    client.send_audio(pcm16(audio), frame_bytes=3200, realtime_rate=2 * RATE)  # real time
    client.stop()
    partials = [p for p in client.of("partial") if p["text"]]
    assert partials and partials[0]["end"] < ends[0] - 0.5


def test_escalation_sends_the_audio_to_the_cloud(
    conformer: ConformerRecognizer, cloud: ThreadedCloud, tts_clips: list[Clip], tmp_path: Path
) -> None:
    settings = edge_settings(
        tmp_path, cloud.grpc_target, model="conformer", always_cloud=True, cloud_deadline_s=PATIENT_S
    )
    server = ThreadedEdge(settings, conformer).start()
    try:
        clips = tts_clips[5:7]
        audio, _ = _speech(clips)
        client = EdgeClient(server.url)
        client.start()
        client.send_audio(pcm16(audio))
        client.stop(timeout=180)
        finals = client.of("final")
        assert len(finals) == len(clips)
        assert all(f["escalated"] and f["source"] == "cloud" for f in finals), finals
        assert wer([c.text for c in clips], [f["text"] for f in finals]) < 0.15
    finally:
        server.stop()


def test_health_names_the_conformer(edge_only: ThreadedEdge) -> None:
    import httpx

    health: dict[str, Any] = httpx.get(f"{edge_only.http}/health", timeout=10).json()
    # The default head of the bundled hybrid model is its transducer.
    assert health["status"] == "ok" and health["model"] == "conformer-small+rnnt"


def test_offramp_escalates_noisy_speech_more_than_clean(
    conformer: ConformerRecognizer, cloud: ThreadedCloud, tts_clips: list[Clip], tmp_path: Path
) -> None:
    """The conformer's own calibration decides (no always_cloud): speech buried in noise (-3 dB SNR) goes
    to the cloud, which then gives the final."""
    settings = edge_settings(tmp_path, cloud.grpc_target, model="conformer", cloud_deadline_s=PATIENT_S)
    server = ThreadedEdge(settings, conformer).start()
    escalated = {False: 0, True: 0}
    try:
        for i, clip in enumerate(tts_clips[:4]):
            for noisy in (False, True):
                audio = _noisy(clip.samples(), -3.0, seed=i) if noisy else clip.samples()
                client = EdgeClient(server.url)
                client.start()
                client.send_audio(pcm16(_speech_of(audio)))
                client.stop(timeout=180)
                for final in client.of("final"):
                    if final["escalated"]:
                        assert final["reason"] in ("low_confidence", "early_pilot", "decode_stopped")
                        assert final["cloud_text"] is not None
                escalated[noisy] += any(f["escalated"] for f in client.of("final"))
    finally:
        server.stop()
    assert escalated[True] >= 3 and escalated[True] > escalated[False], escalated


def _speech_of(audio: np.ndarray) -> np.ndarray:
    silence = np.zeros(int(0.5 * RATE), np.float32)
    return np.concatenate([silence, audio, np.zeros(int(1.2 * RATE), np.float32)])
