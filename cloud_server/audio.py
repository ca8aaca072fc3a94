"""Turn what clients send into 16 kHz float32 mono samples, or say precisely why not."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Literal

import av
import numpy as np

SAMPLE_RATE = 16000

# What the PCM check below lets through; said in its refusals.
ACCEPTED_PCM = (
    "PCM WAV/AIFF with 8-, 16-, 24- or 32-bit integer, 32- or 64-bit float or 8-bit A-law/µ-law samples, "
    "or a compressed format (FLAC, MP3, Opus, Vorbis, AAC)"
)
_PCM_BITS = {"integer": (8, 16, 24, 32), "float": (32, 64), "A-law": (8,), "µ-law": (8,)}
# WAVE format tags (WAVE_FORMAT_EXTENSIBLE carries one of these in its sub-format).
_WAV_KINDS = {1: "integer", 3: "float", 6: "A-law", 7: "µ-law"}
# AIFF-C compression types that hold plain integer samples.
_AIFC_INTEGER = (b"NONE", b"twos", b"sowt", b"raw ")
# Demuxers whose duration is what the file states: a sample count, a data size, a last timestamp. The
# others (raw MP3, ADTS AAC) estimate it from the first frames' bit rate when there is no Xing header: a VBR
# MP3 that opens with silence came out five times too long. Those are held to the limit while decoding.
_STATED_DURATION = frozenset(
    {"wav", "w64", "flac", "aiff", "caf", "ogg", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"}
)


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
    """Decode any container/codec FFmpeg knows (wav, flac, mp3, ogg, m4a, webm...) to 16 kHz mono.

    Blocking: call it off the event loop. A small file can hold hours of audio (an hour of silence is
    90 kB of FLAC), so a length the container states is checked before decoding, and decoding stops as
    soon as it passes ``max_seconds`` when the file states none or lies: memory and time stay bounded by
    the limit, not by what the file expands to."""
    if not data:
        raise InvalidAudioError("the uploaded file is empty")
    check_pcm_format(data)
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidAudioError("the file holds no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context is None:
                raise InvalidAudioError(f"the file's audio codec is not supported; send {ACCEPTED_PCM}")
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > max_seconds:
                raise InvalidAudioError(
                    f"audio is too long ({declared:.1f} s by the file's header); "
                    f"the limit is {max_seconds:g} s"
                )
            audio = _decode(container, stream, max_seconds)
    except InvalidAudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise InvalidAudioError(f"could not decode the audio file: {exc}") from exc
    if audio.size == 0:
        raise InvalidAudioError("the file holds no audio samples")
    return audio


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The length the container states (e.g. FLAC's sample count, WAV's data size), if any."""
    if container.format.name not in _STATED_DURATION:
        return None
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _decode(container: av.container.InputContainer, stream: av.AudioStream, max_seconds: float) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    decoded_s = 0.0
    for frame in _frames(container, stream):
        if frame.sample_rate <= 0:
            raise InvalidAudioError(f"the audio stream has an invalid sample rate ({frame.sample_rate})")
        samples = frame.to_ndarray()
        if samples.dtype.kind == "f":
            _check_finite(samples, frame, decoded_s)
        decoded_s += frame.samples / frame.sample_rate
        if decoded_s > max_seconds:
            raise InvalidAudioError(f"audio is too long: decoding passed the limit of {max_seconds:g} s")
        # Samples are wanted in decode order; timestamps, which some files get wrong, play no part.
        frame.pts = None
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _frames(container: av.container.InputContainer, stream: av.AudioStream) -> Iterator[av.AudioFrame]:
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue  # a corrupt packet: skip it and go on, as the ffmpeg command line does
        for frame in frames:
            if isinstance(frame, av.AudioFrame):
                yield frame


def _check_finite(samples: np.ndarray, frame: av.AudioFrame, offset_s: float) -> None:
    """NaN or infinity would reach the model as full-scale noise (the s16 conversion clips them); the
    edge refuses the same samples."""
    bad = ~np.isfinite(samples)
    if not bad.any():
        return
    index = int(np.nonzero(bad)[1].min())
    if not frame.format.is_planar:  # interleaved channels share one row
        index //= frame.layout.nb_channels
    raise InvalidAudioError(
        f"the audio holds non-finite samples (NaN or infinity), the first at "
        f"{offset_s + index / frame.sample_rate:.2f} s"
    )


def check_pcm_format(data: bytes) -> None:
    """Refuse WAV/AIFF PCM with a bit depth FFmpeg would round up to a wider format: a 7-bit WAV
    decodes as 8-bit unsigned, which turns its samples into loud noise (Whisper answered "Music")."""
    declared = _wav_sample_format(data) or _aiff_sample_format(data)
    if declared is None:
        return
    kind, bits = declared
    if bits not in _PCM_BITS[kind]:
        raise InvalidAudioError(f"unsupported sample format: {bits}-bit {kind} PCM; send {ACCEPTED_PCM}")


def _wav_sample_format(data: bytes) -> tuple[str, int] | None:
    """(kind, bits per sample) from a RIFF/RF64 WAVE fmt chunk, or None (not WAV, or not plain PCM)."""
    if data[:4] not in (b"RIFF", b"RF64", b"BW64") or data[8:12] != b"WAVE":
        return None
    fmt = _find_chunk(data, b"fmt ", "little")
    if fmt is None or len(fmt) < 16:
        return None
    tag = int.from_bytes(fmt[0:2], "little")
    bits = int.from_bytes(fmt[14:16], "little")
    if tag == 0xFFFE and len(fmt) >= 26:
        tag = int.from_bytes(fmt[24:26], "little")  # the first two bytes of the sub-format GUID
    kind = _WAV_KINDS.get(tag)
    return (kind, bits) if kind else None


def _aiff_sample_format(data: bytes) -> tuple[str, int] | None:
    """(kind, bits per sample) from an AIFF/AIFF-C COMM chunk holding integer samples, or None."""
    if data[:4] != b"FORM" or data[8:12] not in (b"AIFF", b"AIFC"):
        return None
    comm = _find_chunk(data, b"COMM", "big")
    if comm is None or len(comm) < 8:
        return None
    if data[8:12] == b"AIFC" and comm[18:22] not in _AIFC_INTEGER:
        return None
    return ("integer", int.from_bytes(comm[6:8], "big"))


def _find_chunk(data: bytes, chunk_id: bytes, byteorder: Literal["little", "big"]) -> bytes | None:
    """The payload of the first ``chunk_id`` chunk of a RIFF- or IFF-style file (chunks from byte 12)."""
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], byteorder)
        if data[pos : pos + 4] == chunk_id:
            return data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return None
