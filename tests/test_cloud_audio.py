"""The cloud's upload decoder: lengths, sample formats and sample values it refuses, and what it returns."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from cloud_server.audio import SAMPLE_RATE, InvalidAudioError, check_pcm_format, decode_file
from tests.audio_files import aiff, silence_flac, vbr_mp3, wav, with_flac_total_samples

LIMIT_S = 120.0


def _tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _soundfile(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_an_hour_of_silence_is_refused_by_its_header() -> None:
    bomb = silence_flac(3600)
    assert len(bomb) < 200_000  # two thousand times smaller than the 16 kHz samples it expands to
    with pytest.raises(InvalidAudioError) as info:
        decode_file(bomb, LIMIT_S)
    assert str(info.value) == "audio is too long (3600.0 s by the file's header); the limit is 120 s"


@pytest.mark.parametrize("declared_samples", [0, 10 * 8000], ids=["no-length", "says-10-s"])
def test_decoding_stops_at_the_limit_when_the_header_says_less(declared_samples: int) -> None:
    bomb = with_flac_total_samples(silence_flac(3600), declared_samples)
    with pytest.raises(InvalidAudioError) as info:
        decode_file(bomb, LIMIT_S)
    assert str(info.value) == "audio is too long: decoding passed the limit of 120 s"


def test_a_length_estimated_from_the_bit_rate_is_not_held_against_the_file() -> None:
    # 5 s of silence (the lowest bit rate), then 25 s of noise: without a Xing header FFmpeg guesses
    # from the first frame that the file lasts about 150 s.
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(5 * SAMPLE_RATE), rng.normal(0, 0.3, 25 * SAMPLE_RATE)])
    for xing in (True, False):
        mp3 = vbr_mp3(audio, xing=xing)
        assert abs(decode_file(mp3, 60).size / SAMPLE_RATE - 30) < 0.1
        with pytest.raises(InvalidAudioError) as info:
            decode_file(mp3, 20)
        assert str(info.value) == "audio is too long: decoding passed the limit of 20 s"


def test_audio_under_the_limit_decodes_to_16_khz() -> None:
    # Says nothing of its length, and is under the limit: decoded in full.
    flac = with_flac_total_samples(silence_flac(119), 0)
    assert decode_file(flac, LIMIT_S).shape == (119 * SAMPLE_RATE,)
    tone = _tone(1.0)
    for subtype in ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"):
        out = decode_file(_soundfile(tone, SAMPLE_RATE, "WAV", subtype), LIMIT_S)
        assert out.dtype == np.float32 and out.shape == tone.shape
        np.testing.assert_allclose(out, tone, atol=1.5 / 32768)
    at_8k = decode_file(_soundfile(_tone(1.0, 8000), 8000, "WAV", "PCM_U8"), LIMIT_S)
    assert at_8k.shape == (SAMPLE_RATE,)
    assert 0.45 < float(np.abs(at_8k).max()) < 0.55


@pytest.mark.parametrize(
    ("dtype", "bits", "bad", "message"),
    [
        ("<f4", 32, {8000: np.nan}, "the first at 0.50 s"),
        ("<f4", 32, {16000: np.inf, 24000: np.nan}, "the first at 1.00 s"),
        ("<f8", 64, {4000: -np.inf}, "the first at 0.25 s"),
    ],
)
def test_non_finite_float_samples_are_refused(
    dtype: str, bits: int, bad: dict[int, float], message: str
) -> None:
    samples = _tone(2.0).astype(dtype)
    for index, value in bad.items():
        samples[index] = value
    with pytest.raises(InvalidAudioError) as info:
        decode_file(wav(samples.tobytes(), bits, format_tag=3), LIMIT_S)
    assert str(info.value) == f"the audio holds non-finite samples (NaN or infinity), {message}"


def test_non_finite_samples_in_interleaved_stereo_give_the_time_not_the_index() -> None:
    stereo = np.stack([_tone(1.0), _tone(1.0)], axis=1)
    stereo[4000, 1] = np.nan
    with pytest.raises(InvalidAudioError, match=r"the first at 0\.25 s$"):
        decode_file(_soundfile(stereo, SAMPLE_RATE, "WAV", "FLOAT"), LIMIT_S)


@pytest.mark.parametrize(
    ("data", "declared"),
    [
        (wav(bytes(range(128)) * 125, 7), "7-bit integer"),
        (wav(np.zeros(16000, "<i2").tobytes(), 12), "12-bit integer"),
        (wav(np.zeros(16000, "<f2").tobytes(), 16, format_tag=3), "16-bit float"),
        (aiff(bytes(16000), 7, 16000), "7-bit integer"),
    ],
    ids=["wav-7-bit", "wav-12-bit", "wav-half-float", "aiff-7-bit"],
)
def test_odd_bit_depths_are_refused_naming_the_accepted_formats(data: bytes, declared: str) -> None:
    with pytest.raises(InvalidAudioError) as info:
        decode_file(data, LIMIT_S)
    message = str(info.value)
    assert message.startswith(f"unsupported sample format: {declared} PCM; send PCM WAV/AIFF with 8-, 16-, ")
    assert "32- or 64-bit float" in message and "FLAC, MP3" in message


def test_standard_pcm_headers_pass_the_format_check() -> None:
    tone = _tone(0.1)
    for subtype in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ALAW", "ULAW"):
        check_pcm_format(_soundfile(tone, SAMPLE_RATE, "WAV", subtype))
        check_pcm_format(_soundfile(tone, SAMPLE_RATE, "WAVEX", subtype))  # the format tag in a GUID
    for subtype in ("PCM_S8", "PCM_16", "PCM_24", "PCM_32"):
        check_pcm_format(_soundfile(tone, SAMPLE_RATE, "AIFF", subtype))
    check_pcm_format(b"not a riff file at all")


def test_files_without_audio_are_refused() -> None:
    with pytest.raises(InvalidAudioError, match=r"^the uploaded file is empty$"):
        decode_file(b"", LIMIT_S)
    with pytest.raises(InvalidAudioError, match=r"^could not decode the audio file: "):
        decode_file(b"RIFF....garbage", LIMIT_S)
    with pytest.raises(InvalidAudioError, match=r"^the file holds no audio samples$"):
        decode_file(wav(b"", 16), LIMIT_S)
