"""Audio files built byte by byte for the cloud's upload checks: long silence, headers that lie, odd sample
formats and non-finite float samples (what soundfile refuses to write, the bytes are written here)."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import soundfile as sf


def silence_flac(seconds: int, rate: int = 8000) -> bytes:
    """``seconds`` of digital silence as 16-bit mono FLAC: an hour is under 100 kB."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        minute = np.zeros(rate * 60, dtype=np.int16)
        for _ in range(seconds // 60):
            f.write(minute)
        f.write(np.zeros(rate * (seconds % 60), dtype=np.int16))
    return buf.getvalue()


def with_flac_total_samples(data: bytes, total: int) -> bytes:
    """The FLAC with STREAMINFO's 36-bit sample count replaced: 0 means unknown (as streaming encoders
    write it), any other value is a claim the frames need not match."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO must be the first metadata block"
    # fLaC, the block header (4 bytes), then block sizes (4) and frame sizes (6): the sample rate,
    # channels, bits per sample and the sample count share the next 8 bytes, the count in the low 36 bits.
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total
    return data[:18] + packed.to_bytes(8, "big") + data[26:]


def wav(samples: bytes, bits: int, format_tag: int = 1, rate: int = 16000) -> bytes:
    """A mono RIFF WAVE whose fmt chunk says ``bits`` per sample (1 = integer PCM, 3 = IEEE float)."""
    block_align = (bits + 7) // 8
    fmt = struct.pack("<HHIIHH", format_tag, 1, rate, rate * block_align, block_align, bits)
    body = b"WAVE" + _chunk(b"fmt ", fmt, "<I") + _chunk(b"data", samples, "<I")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def aiff(samples: bytes, bits: int, frames: int) -> bytes:
    """A mono 16 kHz AIFF whose COMM chunk says ``bits`` per sample."""
    # 16000 as an 80-bit IEEE extended float: exponent 16383 + 13, mantissa 16000 << (63 - 13).
    rate = struct.pack(">HQ", 16383 + 13, 16000 << 50)
    comm = struct.pack(">hIh", 1, frames, bits) + rate
    ssnd = struct.pack(">II", 0, 0) + samples
    body = b"AIFF" + _chunk(b"COMM", comm, ">I") + _chunk(b"SSND", ssnd, ">I")
    return b"FORM" + struct.pack(">I", len(body)) + body


def _chunk(chunk_id: bytes, payload: bytes, size_format: str) -> bytes:
    pad = b"\x00" if len(payload) % 2 else b""
    return chunk_id + struct.pack(size_format, len(payload)) + payload + pad


def vbr_mp3(samples: np.ndarray, *, xing: bool, rate: int = 16000) -> bytes:
    """Variable-bit-rate MP3 of float ``samples``; without the Xing header the length is not stated, and
    FFmpeg estimates it from the first frame's bit rate."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3", options={} if xing else {"write_xing": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        stream.codec_context.qscale = True  # a fixed quality, so each frame gets the bit rate it needs
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()
