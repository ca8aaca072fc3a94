"""Decoding client frames and streaming resampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soxr  # type: ignore[import-untyped, unused-ignore]

from edge_agent.audio.convert import AudioFormatError, StreamResampler, check_rate, pcm_to_float


def test_pcm_s16le_is_scaled_by_1_over_32768() -> None:
    data = np.array([0, 16384, -32768, 32767, -1], dtype="<i2").tobytes()
    out = pcm_to_float(data, "pcm_s16le")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([0, 0.5, -1, 32767 / 32768, -1 / 32768], dtype=np.float32))
    out[0] = 1.0  # a writable copy, not a view of the frame


def test_f32le_round_trips_exactly() -> None:
    samples = np.array([0.0, 0.25, -1.0, 1e-7, 0.999], dtype=np.float32)
    out = pcm_to_float(samples.astype("<f4").tobytes(), "f32le")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, samples)
    assert out.flags.writeable


def test_other_byte_containers_and_empty_frames() -> None:
    data = np.array([16384], dtype="<i2").tobytes()
    np.testing.assert_array_equal(pcm_to_float(bytearray(data), "pcm_s16le"), [0.5])
    np.testing.assert_array_equal(pcm_to_float(memoryview(data), "pcm_s16le"), [0.5])
    assert pcm_to_float(b"", "f32le").shape == (0,)


@pytest.mark.parametrize(
    ("data", "encoding", "message"),
    [
        (b"\x00\x00", "mulaw", "unknown audio encoding 'mulaw'"),
        (b"\x00\x00", "PCM_S16LE", "unknown audio encoding"),
        (b"\x00\x00\x00", "pcm_s16le", "3 bytes is not a whole number of pcm_s16le samples"),
        (b"\x00" * 6, "f32le", "6 bytes is not a whole number of f32le samples"),
        (np.array([0.0, np.nan], dtype="<f4").tobytes(), "f32le", "1 non-finite"),
        (np.array([np.inf, -np.inf, 0], dtype="<f4").tobytes(), "f32le", "2 non-finite"),
    ],
)
def test_bad_frames_raise_audio_format_error(data: bytes, encoding: str, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        pcm_to_float(data, encoding)


def test_audio_format_error_is_a_value_error() -> None:
    assert issubclass(AudioFormatError, ValueError)


@pytest.mark.parametrize("rate", [7999, 48001, 0, -16000, 16000.0, True, "16000"])
def test_bad_rates_are_rejected(rate: object) -> None:
    with pytest.raises(AudioFormatError):
        check_rate(rate)  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError):
        StreamResampler(rate)  # type: ignore[arg-type]


def test_rate_bounds_are_inclusive() -> None:
    assert check_rate(8000) == 8000
    assert check_rate(48000) == 48000
    assert check_rate(np.int64(22050)) == 22050  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError, match="output sample rate 96000"):
        StreamResampler(16000, 96000)
    with pytest.raises(ValueError):
        StreamResampler(16000, quality="LQ")  # type: ignore[arg-type]


def _stream(resampler: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    outs = []
    chunks = itertools.cycle(sizes)
    i = 0
    while i < len(x):
        n = next(chunks)
        outs.append(resampler.process(x[i : i + n]))
        i += n
    outs.append(resampler.flush())
    return np.concatenate(outs)


def _sine(rate: int, seconds: float, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
@pytest.mark.parametrize("quality", ["HQ", "VHQ"])
def test_streamed_resampling_of_a_sine(rate: int, quality: str) -> None:
    x = _sine(rate, 2.0)
    y = _stream(StreamResampler(rate, 16000, quality=quality), x, [1, 7, 333, 1021, 4099, 17])  # type: ignore[arg-type]
    assert y.dtype == np.float32

    expected = len(x) * 16000 / rate
    assert abs(len(y) - expected) <= 0.01 * expected

    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * 16000 / len(y)
    assert peak_hz == pytest.approx(1000.0, abs=16000 / len(y))
    # Amplitude is preserved away from the filter's edge transients.
    middle = y[len(y) // 4 : 3 * len(y) // 4]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)

    one_shot = soxr.resample(x, rate, 16000, quality=quality)
    assert len(y) == len(one_shot)
    np.testing.assert_allclose(y, one_shot, atol=1e-5)


def test_identity_fast_path() -> None:
    r = StreamResampler(16000)
    assert r.identity
    x = _sine(16000, 0.1)
    out = r.process(x)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(r.process(x.astype(np.float64)), x)
    assert r.flush().shape == (0,)


def test_process_after_flush_needs_reset() -> None:
    x = _sine(8000, 0.5)
    r = StreamResampler(8000)
    first = np.concatenate([r.process(x), r.flush()])
    assert r.flush().shape == (0,)
    with pytest.raises(RuntimeError, match="reset"):
        r.process(x)
    r.reset()
    second = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(first, second)


def test_multichannel_input_is_rejected() -> None:
    with pytest.raises(AudioFormatError, match="1-D"):
        StreamResampler(8000).process(np.zeros((10, 2), dtype=np.float32))
