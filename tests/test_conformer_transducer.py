"""The bundled conformer's transducer head (``EDGE_CONFORMER_HEAD=rnnt``): the encoder graph stepped with
its caches, RNN-T greedy over the decoder and joiner graphs, through the stream interface and the
WebSocket path."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from edge_agent.asr.conformer.stream import BUNDLED_NAME, ConformerRecognizer
from edge_agent.asr.registry import load_model
from edge_agent.settings import EdgeSettings
from tests.edge_client import EdgeClient, pcm16
from tests.servers import ThreadedEdge, edge_settings
from tests.speech import Clip, wer
from tests.test_conformer_stream import WER_LIMIT

pytestmark = pytest.mark.model
RATE = 16000


@pytest.fixture(scope="module")
def transducer() -> ConformerRecognizer:
    model = load_model(EdgeSettings(model="conformer", conformer_head="rnnt"))
    assert isinstance(model, ConformerRecognizer)
    return model


def test_auto_picks_the_transducer_of_a_hybrid_model() -> None:
    model = load_model(EdgeSettings(model="conformer"))
    assert isinstance(model, ConformerRecognizer) and model.onnx.head == "rnnt"


def test_the_head_is_the_transducer_with_its_own_name_and_no_n_best(transducer: ConformerRecognizer) -> None:
    assert transducer.onnx.head == "rnnt" and transducer.name == f"{BUNDLED_NAME}+rnnt"
    assert transducer.onnx.path.name == "encoder.int8.onnx"
    caps = transducer.capabilities
    assert caps.native_streaming and caps.chunk_samples == 32 * 160 and not caps.n_best
    stream = transducer.create_stream()
    stream.accept(np.zeros(RATE, np.float32))
    stream.finalize()
    assert stream.n_best(3) == []
    ctc = load_model(EdgeSettings(model="conformer", conformer_head="ctc"))
    assert isinstance(ctc, ConformerRecognizer) and ctc.onnx.head == "ctc" and ctc.name == BUNDLED_NAME


def test_tokens_and_words_carry_confidences(transducer: ConformerRecognizer, tts_clips: list[Clip]) -> None:
    stream = transducer.create_stream()
    stream.accept(tts_clips[3].samples())
    final = stream.finalize()
    assert all(t.logprob <= 0.0 and t.entropy >= 0.0 for t in final.tokens)
    words = transducer.words(final.tokens)
    assert " ".join(w for w, _ in words) == final.text
    assert all(0.0 < c <= 1.0 for _, c in words)


def test_websocket_stream_with_the_transducer_head(
    transducer: ConformerRecognizer, tts_clips: list[Clip], tmp_path: Path
) -> None:
    settings = edge_settings(tmp_path, None, model="conformer", conformer_head="rnnt")
    server = ThreadedEdge(settings, transducer).start()
    try:
        clips = tts_clips[:3]
        parts = [np.zeros(RATE // 2, np.float32)]
        for clip in clips:
            parts += [clip.samples(), np.zeros(int(1.2 * RATE), np.float32)]
        client = EdgeClient(server.url)
        assert client.start()["type"] == "ready"
        client.send_audio(pcm16(np.concatenate(parts)), frame_bytes=3200, realtime_rate=4 * 2 * RATE)
        events = client.stop()
        finals = client.of("final")
        assert len(finals) == len(clips) and events[-1] == {"type": "end", "utterances": len(finals)}
        assert wer([c.text for c in clips], [f["text"] for f in finals]) < WER_LIMIT
        for final in finals:
            assert final["source"] == "edge" and 0.0 <= final["confidence"] <= 1.0 and final["words"]
            texts = [p["text"] for p in client.of("partial") if p["utterance_id"] == final["utterance_id"]]
            assert texts and all(a != b for a, b in itertools.pairwise(texts))
    finally:
        server.stop()
