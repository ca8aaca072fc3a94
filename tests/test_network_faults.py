"""Network faults between a real edge and a real cloud: a TCP proxy in between drops, refuses, cuts and
slows the link while a client streams. Whatever happens, every utterance gets exactly one final, each
one the cloud could not answer in time gets exactly one correction after recovery, and the breaker
opens and closes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from speech_bench.services import free_port
from tests.edge_client import EdgeClient, pcm16, with_silence
from tests.fault_proxy import FaultProxy
from tests.servers import ThreadedCloud, ThreadedEdge, cloud_settings, edge_settings, wait_until
from tests.speech import Clip, wer

pytestmark = pytest.mark.model
RATE = 16000
DEADLINE_S = 2.0


@pytest.fixture()
def link(model_cache: str) -> Iterator[tuple[ThreadedCloud, FaultProxy]]:
    port = free_port()
    cloud = ThreadedCloud(cloud_settings(model_cache, model="tiny.en", grpc_port=port)).start()
    proxy = FaultProxy(port).start()
    yield cloud, proxy
    proxy.stop()
    cloud.stop()


def test_drops_refusals_cuts_and_a_slow_link(
    edge_model: Any, link: tuple[ThreadedCloud, FaultProxy], tmp_path: Path, real_clips: list[Clip]
) -> None:
    cloud, proxy = link
    settings = edge_settings(
        tmp_path, f"127.0.0.1:{proxy.port}", escalation_threshold=0.0, cloud_deadline_s=DEADLINE_S,
        retry_deadline_s=20.0, breaker_failures=2,
    )  # fmt: skip
    edge = ThreadedEdge(settings, edge_model).start()

    def health() -> dict[str, Any]:
        return dict(httpx.get(f"{edge.http}/health", timeout=10).json())

    clips = [c for c in real_clips if c.kind == "read"][:3]
    try:
        client = EdgeClient(edge.url)
        client.start()
        # 1. Every packet dropped: the cloud never hears the utterance; the edge answers at its deadline.
        proxy.set("blackhole")
        client.send_audio(pcm16(with_silence(clips[0].samples())))
        (dropped,) = client.wait_for("final", 1, timeout=60)
        # 2. Connections refused, and the one open cut: the call fails at once.
        proxy.set("refuse")
        proxy.cut()
        client.send_audio(pcm16(with_silence(clips[1].samples())))
        refused = client.wait_for("final", 2, timeout=60)[1]
        for final in (dropped, refused):
            assert final["escalated"] and final["cloud_pending"] and final["source"] == "edge"
            # Bounded by the deadline, not by the dead link (the rest is the edge's own decode of a
            # long sentence, slow on a loaded machine).
            assert final["finalize_ms"] < DEADLINE_S * 1000 + 10_000
        assert wait_until(lambda: health()["cloud"] == "open", timeout=30)
        assert health()["queued_escalations"] == 2
        # 3. The link comes back, slow: both queued utterances are answered, once each.
        proxy.set("pass", delay_s=0.05)
        proxy.cut()  # the half-open connection of the drop phase must not be reused
        corrections = client.wait_for("correction", 2, timeout=120)
        assert {c["utterance_id"] for c in corrections} == {dropped["utterance_id"], refused["utterance_id"]}
        by_id = {c["utterance_id"]: c for c in corrections}
        for final, clip in ((dropped, clips[0]), (refused, clips[1])):
            assert wer([clip.text], [by_id[final["utterance_id"]]["cloud_text"]]) < 0.3
        assert wait_until(lambda: health()["cloud"] == "closed" and health()["queued_escalations"] == 0, 60)
        # 4. The link breaks in the middle of an utterance streamed in real time.
        cuts = {"done": False}

        def cut_midway() -> None:
            proxy.cut()
            cuts["done"] = True

        audio = pcm16(with_silence(clips[2].samples()))
        half = len(audio) // 2 // 2 * 2
        client.send_audio(audio[:half], realtime_rate=RATE * 2)
        cut_midway()
        client.send_audio(audio[half:], realtime_rate=RATE * 2)
        last = client.wait_for("final", 3, timeout=60)[2]
        if last["cloud_pending"]:
            assert client.wait_for("correction", 3, timeout=120)[2]["utterance_id"] == last["utterance_id"]
        else:
            assert wer([clips[2].text], [last["cloud_text"]]) < 0.3
        events = client.stop()
        finals = Counter(e["utterance_id"] for e in events if e["type"] == "final")
        corrected = Counter(e["utterance_id"] for e in events if e["type"] == "correction")
        assert len(finals) == 3 and set(finals.values()) == {1}, finals
        assert set(corrected.values()) <= {1}, corrected
        assert cuts["done"] and health()["queued_escalations"] == 0
        # Each utterance reached the model at most once per answer: retries of an answered one are replays.
        decodes = cloud.metric("cloud_inference_seconds_count", {"operation": "recognize"})
        assert decodes <= 3 + 1  # the dropped one may also have been decoded (its answer was swallowed)
    finally:
        edge.stop()
