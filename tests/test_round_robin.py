"""Scale-out: the edge spreads escalations over three real cloud processes, and killing one loses nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from speech_bench.services import Service, metric, start_cloud
from tests.edge_client import EdgeClient, pcm16
from tests.servers import ThreadedEdge, edge_settings
from tests.speech import Clip, wer

pytestmark = pytest.mark.model


def _recognized(cloud: Service) -> float:
    return metric(cloud.metrics(), "cloud_requests_total", 'interface="grpc"')


def test_round_robin_over_three_clouds_and_one_killed(
    edge_model: Any, tmp_path: Path, real_clips: list[Clip], tts_clips: list[Clip]
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clouds = [start_cloud("tiny.en", 1, tmp_path / f"cloud{i}.log") for i in range(3)]
    try:
        target = "ipv4:" + ",".join(c.extra["grpc"] for c in clouds)
        settings = edge_settings(
            tmp_path, target, always_cloud=True, cloud_deadline_s=30.0, breaker_failures=10
        )
        edge = ThreadedEdge(settings, edge_model).start()
        try:
            clips = (real_clips[:3] + tts_clips[:6])[:9]
            silence = np.zeros(12000, np.float32)
            client = EdgeClient(edge.url)
            client.start()
            for clip in clips[:6]:
                client.send_audio(pcm16(np.concatenate([clip.samples(), silence, silence])))
            try:
                client.wait_for("final", 6, timeout=120)
            except TimeoutError:
                raise AssertionError([e for _, e in client.events]) from None
            counts = [_recognized(c) for c in clouds]
            assert sum(counts) == 6 and all(n >= 1 for n in counts), counts  # spread over all three
            victim = clouds[1]
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            for clip in clips[6:]:
                client.send_audio(pcm16(np.concatenate([clip.samples(), silence, silence])))
            finals = client.wait_for("final", 9, timeout=120)
            deadline = time.monotonic() + 60
            pending = {f["utterance_id"] for f in finals if f["cloud_pending"]}
            while (
                pending - {c["utterance_id"] for c in client.of("correction")} and time.monotonic() < deadline
            ):
                client.next_event(timeout=max(0.1, deadline - time.monotonic()))
            client.stop()
        finally:
            edge.stop()
        answered = {f["utterance_id"] for f in finals if f["source"] == "cloud"}
        answered |= {c["utterance_id"] for c in client.of("correction")}
        assert len(finals) == 9 and answered == {f["utterance_id"] for f in finals}  # no utterance lost
        texts = [f["text"] for f in finals]
        assert wer([c.text for c in clips], texts) < 0.25
        survivors = [_recognized(c) for c in (clouds[0], clouds[2])]
        assert sum(survivors) >= 9 - counts[1]  # the last three went to the two live clouds
    finally:
        for cloud in clouds:
            cloud.stop()
