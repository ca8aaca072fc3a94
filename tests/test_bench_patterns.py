"""speech-bench's two client patterns against a real edge agent (real VAD, real edge model, no cloud)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from speech_bench.manifest import Segment, Utterance
from speech_bench.segments import estimate_speech_span
from speech_bench.streaming import LEAD_S, OPEN_MIC, OPEN_MIC_CAP_S, PUSH_TO_TALK, stream_utterance
from tests.servers import ThreadedEdge, edge_settings
from tests.speech import Clip, wer

pytestmark = pytest.mark.model
RATE = 16000
EXTRA_TAIL_S = 3.0


@pytest.fixture(scope="module")
def edge(edge_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedEdge]:
    server = ThreadedEdge(edge_settings(tmp_path_factory.mktemp("edge")), edge_model).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def utterance(tts_clips: list[Clip], tmp_path_factory: pytest.TempPathFactory) -> Utterance:
    """A clip with seconds of silence after its speech, and a manifest-style speech span."""
    clip = tts_clips[0]
    audio = clip.samples()
    span = estimate_speech_span(audio, RATE)
    assert span is not None
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(path, np.concatenate([audio, np.zeros(int(EXTRA_TAIL_S * RATE), np.float32)]), RATE)
    return Utterance(path, clip.text, clip.duration + EXTRA_TAIL_S, clip.kind, "t", span[0], span[1])


def test_open_mic_waits_for_the_endpointer_and_times_from_the_end_of_speech(
    edge: ThreadedEdge, utterance: Utterance
) -> None:
    record = asyncio.run(stream_utterance(edge.url, utterance, "edge", 1.0, OPEN_MIC))
    assert record.pattern == OPEN_MIC and record.errors == [] and record.finals == 1
    assert wer([utterance.text], [record.text]) < 0.3
    # The edge's own endpointer ended the utterance (no stop had been sent), and where it says the speech
    # ended is where the manifest says it did: the clock started at the end of the speech, not of the clip.
    assert record.end_reasons == ["silence"]
    assert utterance.speech_end is not None and record.speech_end_s is not None
    assert LEAD_S + utterance.speech_end <= record.speech_end_s < LEAD_S + utterance.speech_end + 0.1
    assert abs(record.final_spans[0][1] - record.speech_end_s) < 1.0
    # The final came while silence was still streaming, some time after the speech ended.
    assert record.latency_ms is not None and 0 < record.latency_ms < 1000 * OPEN_MIC_CAP_S
    assert record.final_at_ms == [record.latency_ms]


def test_push_to_talk_stops_right_after_the_speech(edge: ThreadedEdge, utterance: Utterance) -> None:
    record = asyncio.run(stream_utterance(edge.url, utterance, "edge", 1.0, PUSH_TO_TALK))
    assert record.pattern == PUSH_TO_TALK and record.errors == [] and record.finals == 1
    assert wer([utterance.text], [record.text]) < 0.3
    # Only the speech was sent, then stop: the utterance ended with the stream (the VAD had no silence
    # to wait for), at the end of the speech.
    assert record.end_reasons == ["stream_end"]
    assert record.speech_end_s is not None and abs(record.final_spans[0][1] - record.speech_end_s) < 0.5
    assert record.latency_ms is not None and record.latency_ms > 0


def test_an_item_with_segments_is_streamed_whole_and_counted(
    edge: ThreadedEdge, utterance: Utterance, tmp_path: Path
) -> None:
    """Two copies of the clip 1.5 s apart: two sentences, each finalized once."""
    assert utterance.speech_start is not None and utterance.speech_end is not None
    audio, _ = sf.read(utterance.path, dtype="float32")
    speech = audio[round(utterance.speech_start * RATE) : round(utterance.speech_end * RATE)]
    gap = np.zeros(int(1.5 * RATE), np.float32)
    path = tmp_path / "two.wav"
    sf.write(path, np.concatenate([gap[:4000], speech, gap, speech, gap[:4000]]), RATE)
    first = (0.25, 0.25 + len(speech) / RATE)
    second = (first[1] + 1.5, first[1] + 1.5 + len(speech) / RATE)
    item = Utterance(
        path, f"{utterance.text} {utterance.text}", 0.0, "pauses", "t", first[0], second[1],
        (Segment(utterance.text, *first), Segment(utterance.text, *second)),
    )  # fmt: skip
    record = asyncio.run(stream_utterance(edge.url, item, "edge", 1.0, PUSH_TO_TALK))
    assert record.pattern == OPEN_MIC  # an item with segments is always streamed open-mic
    assert record.segmentation is not None
    assert (record.segmentation.sentences, record.segmentation.split, record.segmentation.merged) == (2, 0, 0)
    assert record.finals == 2 and record.end_reasons == ["silence", "silence"]
    assert len(record.sentence_latency_ms) == 2 and all(x > 0 for x in record.sentence_latency_ms)
