"""The cloud's answer for a calibration clip, asked of a running ``cloud-server`` over gRPC.

Calibration needs Whisper's best hypothesis with its ``avg_logprob`` and ``no_speech_prob`` for every
clip. The edge install does not carry Whisper, so it asks the cloud the agent escalates to
(``EDGE_CLOUD_TARGET``, with the same API key and TLS settings), one unary ``Recognize`` per clip.
"""

from __future__ import annotations

import grpc
import numpy as np

from asr_common.protos import speech_pb2, speech_pb2_grpc
from edge_agent.escalation.manager import channel_credentials
from edge_agent.settings import EdgeSettings

CloudAnswer = tuple[str, float, float]
"""(text, avg_logprob, no_speech_prob) of the cloud's best hypothesis for one clip."""

# What a clip the cloud finds no hypothesis for scores: very unsure, and probably no speech.
NO_ANSWER: CloudAnswer = ("", -5.0, 1.0)


class CloudReference:
    """A blocking gRPC client for calibration: one channel, English, one hypothesis per clip."""

    def __init__(self, settings: EdgeSettings, target: str, deadline_s: float = 300.0) -> None:
        credentials = channel_credentials(settings)
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._stub = speech_pb2_grpc.CloudRecognizerStub(self._channel)
        key = settings.cloud_api_key
        self._metadata = (("authorization", f"Bearer {key.get_secret_value()}"),) if key else ()
        self._deadline_s = deadline_s
        self.target = target

    def ask(self, audio: np.ndarray) -> CloudAnswer:
        """The cloud's best hypothesis for 16 kHz float audio in -1..1."""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        request = speech_pb2.RecognizeRequest(
            config=speech_pb2.RecognitionConfig(language="en", n_best=1, sample_rate_hz=16000), audio=pcm
        )
        # wait_for_ready: a cloud still loading its model is waited for (within the deadline), not failed.
        response = self._stub.Recognize(
            request, timeout=self._deadline_s, metadata=self._metadata, wait_for_ready=True
        )
        if not response.hypotheses:
            return NO_ANSWER
        best = response.hypotheses[0]
        return best.text, float(best.avg_logprob), float(best.no_speech_prob)

    def close(self) -> None:
        self._channel.close()
