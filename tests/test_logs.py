"""Structured logs: JSON lines whose utterance ids join the edge's and the cloud's lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr_common.logs import configure
from tests.edge_client import EdgeClient, pcm16
from tests.servers import ThreadedCloud, ThreadedEdge, cloud_settings, edge_settings
from tests.speech import Clip


def test_json_lines_carry_extra_fields(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure("INFO", "json", "edge-agent")
        logging.getLogger("edge_agent.test").info("final %s", "u-1", extra={"utterance_id": "u-1"})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "final u-1" and line["utterance_id"] == "u-1"
    assert line["service"] == "edge-agent" and line["level"] == "INFO" and line["logger"] == "edge_agent.test"


@pytest.mark.model
def test_edge_and_cloud_lines_join_on_utterance_id(
    edge_model: Any,
    model_cache: str,
    tmp_path: Path,
    real_clips: list[Clip],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    cloud = ThreadedCloud(cloud_settings(model_cache, model="tiny.en")).start()
    edge = ThreadedEdge(
        edge_settings(tmp_path, cloud.grpc_target, always_cloud=True, cloud_deadline_s=60.0), edge_model
    ).start()
    try:
        client = EdgeClient(edge.url)
        client.start()
        silence = np.zeros(16000, np.float32)
        client.send_audio(pcm16(np.concatenate([silence, real_clips[0].samples(), silence])))
        final = next(e for e in client.stop() if e["type"] == "final")
    finally:
        edge.stop()
        cloud.stop()
    ids = {
        name: {getattr(r, "utterance_id", None) for r in caplog.records if r.name == name}
        for name in ("edge_agent.session", "cloud_server.grpc_service")
    }
    assert final["utterance_id"] in ids["edge_agent.session"]
    assert final["utterance_id"] in ids["cloud_server.grpc_service"]
