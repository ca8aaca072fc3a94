"""Calibration's cloud answers come from a running cloud over gRPC (real Whisper base on loopback)."""

from __future__ import annotations

import grpc
import pytest
from pydantic import SecretStr

from edge_agent.cloud_reference import CloudReference
from edge_agent.settings import EdgeSettings
from tests.servers import ThreadedCloud, cloud_settings
from tests.speech import Clip, wer

pytestmark = pytest.mark.model


def test_answers_carry_whisper_scores(cloud: ThreadedCloud, real_clips: list[Clip]) -> None:
    reference = CloudReference(EdgeSettings(cloud_target=cloud.grpc_target), cloud.grpc_target)
    try:
        answers = [reference.ask(clip.samples()) for clip in real_clips]
    finally:
        reference.close()
    assert wer([c.text for c in real_clips], [text for text, _, _ in answers]) < 0.15
    for _, avg_logprob, no_speech_prob in answers:
        assert -5.0 < avg_logprob < 0.0
        assert 0.0 <= no_speech_prob < 0.5


def test_api_key_and_failures(model_cache: str, real_clips: list[Clip]) -> None:
    keyed = ThreadedCloud(cloud_settings(model_cache, api_key=SecretStr("k"))).start()
    try:
        target = keyed.grpc_target
        right = CloudReference(EdgeSettings(cloud_api_key=SecretStr("k")), target)
        wrong = CloudReference(EdgeSettings(cloud_api_key=SecretStr("x")), target)
        try:
            assert right.ask(real_clips[0].samples())[0]
            with pytest.raises(grpc.RpcError) as refused:
                wrong.ask(real_clips[0].samples())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        finally:
            right.close()
            wrong.close()
    finally:
        keyed.stop()
    # Nothing listens: the call waits for the channel within its deadline, then fails with it.
    unreachable = CloudReference(EdgeSettings(), "127.0.0.1:1", deadline_s=1.0)
    try:
        with pytest.raises(grpc.RpcError) as failed:
            unreachable.ask(real_clips[0].samples())
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    finally:
        unreachable.close()
