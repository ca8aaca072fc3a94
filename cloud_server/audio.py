"""Turn what clients send into 16 kHz float32 mono samples, or say precisely why not."""

from __future__ import annotations

import io

import av
import numpy as np
from faster_whisper.audio import decode_audio

SAMPLE_RATE = 16000


class InvalidAudioError(ValueError):
    """The audio cannot be used; the message is meant for the client."""


def pcm16_to_float(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Validate raw PCM16 little-endian mono at 16 kHz and convert it to float32 in [-1, 1)."""
    if sample_rate not in (0, SAMPLE_RATE):
        raise InvalidAudioError(f"unsupported sample_rate_hz {sample_rate}: send 16000 Hz PCM16 mono")
    if not data:
        raise InvalidAudioError("audio is empty")
    if len(data) % 2:
        raise InvalidAudioError(f"audio has an odd byte count ({len(data)}): PCM16 needs 2 bytes per sample")
    check_duration(len(data) / 2 / SAMPLE_RATE, max_seconds)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise InvalidAudioError(f"audio is too long ({seconds:.1f} s); the limit is {max_seconds:g} s")


def decode_file(data: bytes, max_seconds: float) -> np.ndarray:
    """Decode any container/codec FFmpeg knows (wav, flac, mp3, ogg, m4a, webm...) to 16 kHz mono."""
    if not data:
        raise InvalidAudioError("the uploaded file is empty")
    try:
        audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, StopIteration, IndexError, ValueError) as exc:
        raise InvalidAudioError(f"could not decode the audio file: {exc}") from exc
    if audio.size == 0:
        raise InvalidAudioError("the file holds no audio samples")
    check_duration(audio.size / SAMPLE_RATE, max_seconds)
    return np.asarray(audio, dtype=np.float32)
