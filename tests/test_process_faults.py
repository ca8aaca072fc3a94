"""Real process faults of the cloud while a client streams to the edge: SIGSTOP/SIGCONT (a frozen host:
connections stay open, nothing answers) and SIGKILL with a restart on the same port. Every utterance
gets exactly one final; each the cloud could not answer in time gets exactly one correction after the
cloud is back; the edge's queue drains because the cloud answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from speech_bench.services import free_port, wait_ready
from tests.edge_client import EdgeClient, pcm16, with_silence
from tests.servers import ThreadedEdge, edge_settings, wait_until
from tests.speech import Clip, wer

pytestmark = pytest.mark.model
DEADLINE_S = 2.0
CLOUD = Path(sys.executable).parent / "cloud-server"


class CloudProcess:
    """``cloud-server`` as its own process on fixed ports, so it can be frozen, killed and restarted."""

    def __init__(self, cache: str, log: Path) -> None:
        self.cache, self.log = cache, log
        self.rest, self.grpc = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CloudProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLOUD_GRACE_S": "0"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(str(CLOUD), "--host", "127.0.0.1", "--port", str(self.rest)),
                    *("--grpc-host", "127.0.0.1", "--grpc-port", str(self.grpc)),
                    *("--model", "tiny.en", "--model-cache-dir", self.cache, "--cpu-threads", "1"),
                ],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_ready(f"http://127.0.0.1:{self.rest}/ready", self.proc, timeout=120, log=self.log)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def requests(self, status: str = "OK") -> float:
        """Answered gRPC calls of both methods (the cloud's own count)."""
        text = httpx.get(f"http://127.0.0.1:{self.rest}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("cloud_requests_total{") and 'interface="grpc"' in line:
                if f'status="{status}"' in line:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture()
def cloud_process(model_cache: str, tmp_path: Path) -> Iterator[CloudProcess]:
    cloud = CloudProcess(model_cache, tmp_path / "cloud.log").start()
    yield cloud
    cloud.stop()


def test_cloud_frozen_then_killed_and_restarted(
    edge_model: Any, cloud_process: CloudProcess, tmp_path: Path, real_clips: list[Clip]
) -> None:
    settings = edge_settings(
        tmp_path, f"127.0.0.1:{cloud_process.grpc}", escalation_threshold=0.0, cloud_deadline_s=DEADLINE_S,
        retry_deadline_s=20.0,
    )  # fmt: skip
    edge = ThreadedEdge(settings, edge_model).start()

    def queued() -> int:
        return int(httpx.get(f"{edge.http}/health", timeout=10).json()["queued_escalations"])

    clips = [c for c in real_clips if c.kind == "read"][:2]
    try:
        client = EdgeClient(edge.url)
        client.start()
        # Frozen: the connection is up, nothing answers; the edge answers at its deadline.
        cloud_process.signal(signal.SIGSTOP)
        client.send_audio(pcm16(with_silence(clips[0].samples())))
        (frozen,) = client.wait_for("final", 1, timeout=60)
        assert frozen["escalated"] and frozen["cloud_pending"] and frozen["source"] == "edge"
        cloud_process.signal(signal.SIGCONT)
        (late,) = client.wait_for("correction", 1, timeout=120)
        assert late["utterance_id"] == frozen["utterance_id"]
        assert wer([clips[0].text], [late["cloud_text"]]) < 0.3
        assert wait_until(lambda: queued() == 0, 60)
        # Killed: the call fails at once; the utterance waits on disk until a new cloud is up.
        answered = cloud_process.requests()
        assert answered >= 1
        cloud_process.signal(signal.SIGKILL)
        assert cloud_process.proc is not None
        cloud_process.proc.wait(10)
        client.send_audio(pcm16(with_silence(clips[1].samples())))
        killed = client.wait_for("final", 2, timeout=60)[1]
        assert killed["escalated"] and killed["cloud_pending"] and killed["source"] == "edge"
        assert queued() == 1
        cloud_process.start()  # same ports
        corrections = client.wait_for("correction", 2, timeout=120)
        assert corrections[1]["utterance_id"] == killed["utterance_id"]
        assert wer([clips[1].text], [corrections[1]["cloud_text"]]) < 0.3
        assert wait_until(lambda: queued() == 0, 60)
        assert cloud_process.requests() == 1  # the new process answered it, once
        events = client.stop()
        finals = Counter(e["utterance_id"] for e in events if e["type"] == "final")
        corrected = Counter(e["utterance_id"] for e in events if e["type"] == "correction")
        assert len(finals) == 2 and set(finals.values()) == {1}, finals
        assert corrected == Counter({frozen["utterance_id"]: 1, killed["utterance_id"]: 1})
    finally:
        edge.stop()
