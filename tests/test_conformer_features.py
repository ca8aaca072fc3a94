"""Conformer log-mel features: NeMo's recipe rebuilt with librosa, and streaming == whole-signal, exactly."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal

from edge_agent.asr.conformer.features import (
    LOG_GUARD,
    FeatureConfig,
    StreamingFeatures,
    frames_for,
    log_mel,
    mel_filters,
)

RATE = 16000

# Our features are float32 and the reference float64: the difference is the float32 rounding of log values
# up to |log(2**-24)| = 16.6, where half an ulp is 9.5e-7 (measured maximum over the signals below: 9.5e-7).
# 1e-5 leaves room for a few ulps from other FFT/BLAS summation orders; a wrong recipe detail (periodic
# window, reflect padding, pre-emphasis 0.96, HTK mel, another log guard) moves features by 0.17 or more.
LIBROSA_TOLERANCE = 1e-5


def librosa_log_mel(audio: np.ndarray) -> np.ndarray:
    """NeMo's ``FilterbankFeatures`` at inference (``docs/nemo-streaming-format.md`` §8.1), in librosa."""
    x = np.asarray(audio, dtype=np.float64)
    emphasized = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    window = scipy.signal.get_window("hann", 400, fftbins=False)  # torch.hann_window(periodic=False)
    spectrum = librosa.stft(
        emphasized, n_fft=512, hop_length=160, win_length=400, window=window, center=True, pad_mode="constant"
    )
    filters = librosa.filters.mel(
        sr=RATE, n_fft=512, n_mels=80, fmin=0, fmax=8000, norm="slaney", htk=False, dtype=np.float64
    )
    features = np.log(filters @ (np.abs(spectrum) ** 2) + 2.0**-24)
    return features[:, : len(x) // 160]  # NeMo masks the STFT's extra last frame


def sweep() -> np.ndarray:
    t = np.arange(2 * RATE) / RATE
    return 0.5 * scipy.signal.chirp(t, f0=50, t1=2, f1=7900)


def noise() -> np.ndarray:
    return 0.1 * np.random.default_rng(0).standard_normal(RATE + RATE // 2)


def silence_then_tone() -> np.ndarray:
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE // 2) / RATE)
    return np.concatenate([np.zeros(RATE // 2), tone])


def odd_length() -> np.ndarray:
    # Not a whole number of hops, and float32 like the stream's audio.
    rng = np.random.default_rng(1)
    n = RATE + 77
    return (0.3 * rng.standard_normal(n) * np.sin(np.arange(n) / 300)).astype(np.float32)


SIGNALS = {"sweep": sweep, "noise": noise, "silence_then_tone": silence_then_tone, "odd_length": odd_length}


@pytest.mark.parametrize("name", SIGNALS)
def test_log_mel_matches_librosa(name: str) -> None:
    audio = SIGNALS[name]()
    ours = log_mel(audio)
    reference = librosa_log_mel(audio)
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape == (80, len(audio) // 160)
    assert np.abs(ours.astype(np.float64) - reference).max() < LIBROSA_TOLERANCE


def test_silence_is_the_log_guard() -> None:
    np.testing.assert_array_equal(log_mel(np.zeros(800)), np.full((80, 5), np.log(LOG_GUARD), np.float32))


def test_mel_filters_match_librosa() -> None:
    reference = librosa.filters.mel(
        sr=RATE, n_fft=512, n_mels=80, fmin=0, fmax=8000, norm="slaney", htk=False, dtype=np.float64
    )
    filters = mel_filters()
    assert filters.shape == (80, 257)
    assert np.abs(filters - reference).max() < 1e-7
    assert not filters.flags.writeable  # cached and shared: nobody may change it


def test_frames_for() -> None:
    samples = (0, 1, 159, 160, 319, 320, RATE, RATE + 77)
    assert [frames_for(n) for n in samples] == [0, 0, 0, 1, 1, 2, 100, 100]
    assert log_mel(np.zeros(159)).shape == (80, 0)


# A length whose last frame is still owed after the last sample (its window reaches past the end).
STREAM_AUDIO = (0.2 * np.random.default_rng(2).standard_normal(2 * RATE + 37)).astype(np.float32)


def stream(audio: np.ndarray, chunk: int) -> tuple[StreamingFeatures, list[np.ndarray]]:
    features = StreamingFeatures()
    return features, [features.accept(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]


@pytest.mark.parametrize("chunk", [1, 159, 160, 161, 4096])
def test_streaming_equals_whole_signal(chunk: int) -> None:
    features, parts = stream(STREAM_AUDIO, chunk)
    whole = log_mel(STREAM_AUDIO)
    emitted = np.concatenate(parts, axis=1)
    # A frame comes out once every sample of its 512-point FFT frame is in (up to sample 160 t + 255).
    assert emitted.shape[1] == features.frames == (len(STREAM_AUDIO) - 96) // 160 == whole.shape[1] - 1
    assert np.array_equal(np.concatenate([emitted, features.tail()], axis=1), whole)


def test_tail_leaves_the_stream_unchanged() -> None:
    cut = RATE + 50
    features, parts = stream(STREAM_AUDIO[:cut], 1000)
    tail = features.tail()
    assert tail.shape == (80, 1)
    assert np.array_equal(features.tail(), tail)
    # The speculative view of the first `cut` samples is what the whole-signal features of them say.
    assert np.array_equal(np.concatenate([*parts, tail], axis=1), log_mel(STREAM_AUDIO[:cut]))
    assert features.frames == sum(p.shape[1] for p in parts)
    # ... and the stream goes on as if tail() had never been called.
    rest = [features.accept(STREAM_AUDIO[i : i + 1000]) for i in range(cut, len(STREAM_AUDIO), 1000)]
    combined = np.concatenate([*parts, *rest, features.tail()], axis=1)
    assert np.array_equal(combined, log_mel(STREAM_AUDIO))


def test_streaming_short_and_empty_input() -> None:
    features = StreamingFeatures()
    assert features.accept(np.zeros(0, np.float32)).shape == (80, 0)
    assert features.tail().shape == (80, 0)
    audio = STREAM_AUDIO[:200]
    assert features.accept(audio).shape == (80, 0)  # one frame owed, its window not complete yet
    assert np.array_equal(features.tail(), log_mel(audio))


def test_streaming_rejects_per_utterance_normalization() -> None:
    with pytest.raises(ValueError, match="cannot be computed incrementally"):
        StreamingFeatures(FeatureConfig(normalize="per_feature"))


def test_per_feature_normalization() -> None:
    audio = odd_length()
    raw = log_mel(audio).astype(np.float64)
    mean = raw.mean(axis=1, keepdims=True)
    std = raw.std(axis=1, ddof=1, keepdims=True)  # NeMo: unbiased std per mel bin, then + 1e-5
    expected = (raw - mean) / (std + 1e-5)
    normalized = log_mel(audio, FeatureConfig(normalize="per_feature"))
    assert normalized.dtype == np.float32
    # features.py reduces the float32 features in float32, this reference in float64 (measured: 1.9e-6).
    assert np.abs(normalized - expected).max() < 1e-5


def test_per_feature_normalization_of_one_frame_is_zero() -> None:
    # One frame has no unbiased std (NaN in torch); its features minus their mean are zero anyway.
    normalized = log_mel(STREAM_AUDIO[:200], FeatureConfig(normalize="per_feature"))
    np.testing.assert_array_equal(normalized, np.zeros((80, 1), np.float32))


def test_unknown_normalization_is_an_error() -> None:
    with pytest.raises(ValueError, match="unsupported feature normalization 'all_features'"):
        log_mel(STREAM_AUDIO[:1600], FeatureConfig(normalize="all_features"))
