"""Log-mel features exactly as NeMo's ``AudioToMelSpectrogramPreprocessor`` computes them, in numpy.

The recipe (NeMo ``FilterbankFeatures`` at inference, dither off): pre-emphasis 0.97 over the whole
signal, a centred STFT with 256 zeros on each side (``torch.stft(center=True, pad_mode="constant")``),
a *symmetric* 400-sample Hann window centred in the 512-point FFT, the power spectrum, a Slaney-scale
Slaney-normalized mel filterbank (librosa's default), ``log(mel + 2**-24)``, and no normalization for the
streaming models. Frame ``t`` is centred on sample ``160 t``; see ``docs/nemo-streaming-format.md`` §8.

``StreamingFeatures`` produces the same frames incrementally: a frame is emitted once every sample it
covers has arrived, so chunked extraction equals the whole-signal one frame for frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

RATE = 16000
LOG_GUARD = 2.0**-24


@dataclass(frozen=True)
class FeatureConfig:
    n_mels: int = 80
    n_fft: int = 512
    win_length: int = 400
    hop: int = 160
    preemph: float = 0.97
    normalize: str = ""
    """``""`` (streaming models: none) or ``per_feature`` (offline models: per-bin mean/std)."""

    @property
    def half(self) -> int:
        return self.n_fft // 2


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's auditory-toolbox scale: linear below 1 kHz, logarithmic above (librosa htk=False).
    f_sp = 200.0 / 3
    mel = hz / f_sp
    min_log_hz = 1000.0
    logstep = np.log(6.4) / 27.0
    log_region = hz >= min_log_hz
    mel = np.where(log_region, min_log_hz / f_sp + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, mel)
    return np.asarray(mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.asarray(
        np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)
    )


@lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, n_fft: int = 512, rate: int = RATE) -> np.ndarray:
    """[n_mels, n_fft//2 + 1] triangular filters from 0 to rate/2, Slaney scale, Slaney (area) norm."""
    fft_freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(rate / 2.0)), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=8)
def _window(win_length: int, n_fft: int) -> np.ndarray:
    # torch.hann_window(periodic=False) is the symmetric Hann; torch.stft centres it in the FFT frame.
    n = np.arange(win_length)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (win_length - 1))
    left = (n_fft - win_length) // 2
    padded = np.zeros(n_fft)
    padded[left : left + win_length] = hann
    padded.flags.writeable = False
    return padded


def frames_for(samples: int, config: FeatureConfig = FeatureConfig()) -> int:
    """Valid frames NeMo reports for ``samples`` of audio (``seq_len``; the STFT's extra frame is masked)."""
    return samples // config.hop


def _power_mel(padded: np.ndarray, starts: np.ndarray, config: FeatureConfig) -> np.ndarray:
    idx = starts[:, None] + np.arange(config.n_fft)[None, :]
    frames = padded[idx] * _window(config.win_length, config.n_fft)[None, :]
    spectrum = np.fft.rfft(frames, n=config.n_fft, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ mel_filters(config.n_mels, config.n_fft).T
    return np.log(mel + LOG_GUARD).T.astype(np.float32)  # [n_mels, frames]


def _normalize(features: np.ndarray, config: FeatureConfig) -> np.ndarray:
    if config.normalize in ("", "NA", "None", "none"):
        return features
    if config.normalize == "per_feature":
        mean = features.mean(axis=1, keepdims=True)
        std = features.std(axis=1, ddof=1, keepdims=True) if features.shape[1] > 1 else np.zeros_like(mean)
        return ((features - mean) / (std + 1e-5)).astype(np.float32)
    raise ValueError(f"unsupported feature normalization {config.normalize!r}")


def log_mel(audio: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """[n_mels, samples // hop] features of a whole 16 kHz float signal."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    count = frames_for(len(x), config)
    if count == 0:
        return np.zeros((config.n_mels, 0), np.float32)
    emphasized = np.concatenate([x[:1], x[1:] - config.preemph * x[:-1]])
    padded = np.concatenate([np.zeros(config.half), emphasized, np.zeros(config.half)])
    starts = np.arange(count) * config.hop
    return _normalize(_power_mel(padded, starts, config), config)


def log_mel_from(audio: np.ndarray, first: int, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Frames ``first .. len(audio) // hop`` of ``log_mel(audio)``, reading only the audio they cover.

    For the end of an utterance: the frames whose window reaches past its last sample (zero padded, as
    NeMo pads the signal) without recomputing the whole signal."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    count = frames_for(len(x), config) - first
    if count <= 0:
        return np.zeros((config.n_mels, 0), np.float32)
    # Frame t covers emphasized samples [hop t - half, hop t + half); one raw sample before for pre-emphasis.
    begin = first * config.hop - config.half
    lo = max(0, begin)
    raw = x[lo:]
    previous = x[lo - 1 : len(x) - 1] if lo > 0 else np.concatenate([x[:1], x[:-1]])
    emphasized = raw - config.preemph * previous
    if lo == 0:
        emphasized[0] = x[0]
    padded = np.concatenate([np.zeros(lo - begin), emphasized, np.zeros(config.half)])
    starts = np.arange(count) * config.hop
    return _power_mel(padded, starts, config)


class StreamingFeatures:
    """Incremental ``log_mel`` (no normalization): the frames of a growing signal, each computed once."""

    def __init__(self, config: FeatureConfig = FeatureConfig()) -> None:
        if config.normalize not in ("", "NA", "None", "none"):
            raise ValueError("per-utterance normalization cannot be computed incrementally")
        self.config = config
        # Pre-emphasized samples, starting with the STFT's left zero pad; trimmed as frames are emitted.
        self._buffer = np.zeros(config.half)
        self._offset = -config.half  # sample index of _buffer[0]
        self._last = 0.0  # last raw sample, for pre-emphasis across chunks
        self._started = False
        self._frames = 0
        self._samples = 0

    @property
    def frames(self) -> int:
        return self._frames

    def accept(self, audio: np.ndarray) -> np.ndarray:
        """Append audio; returns [n_mels, k] for the frames that became complete."""
        x = np.asarray(audio, dtype=np.float64).reshape(-1)
        if len(x) == 0:
            return np.zeros((self.config.n_mels, 0), np.float32)
        previous = np.concatenate([[x[0] if not self._started else self._last], x[:-1]])
        emphasized = x - self.config.preemph * previous
        if not self._started:
            emphasized[0] = x[0]
            self._started = True
        self._last = float(x[-1])
        self._buffer = np.concatenate([self._buffer, emphasized])
        self._samples += len(x)
        # Frame t covers padded samples [160t, 160t + 512): it needs raw samples up to 160t + 255.
        ready = (self._samples - self.config.half) // self.config.hop + 1
        return self._emit(max(0, ready) - self._frames)

    def tail(self) -> np.ndarray:
        """The frames still owed if the signal ended now (right zero pad), up to ``samples // hop``.

        Leaves the state alone: a speculative final may read the tail and the stream go on."""
        owed = frames_for(self._samples, self.config) - self._frames
        if owed <= 0:
            return np.zeros((self.config.n_mels, 0), np.float32)
        padded = np.concatenate([self._buffer, np.zeros(self.config.half)])
        return _power_mel(padded, self._start() + np.arange(owed) * self.config.hop, self.config)

    def _start(self) -> int:
        # _buffer[b] holds padded-signal sample b + _offset + half; frame t starts at padded sample 160 t.
        return self._frames * self.config.hop - self._offset - self.config.half

    def _emit(self, count: int) -> np.ndarray:
        if count <= 0:
            return np.zeros((self.config.n_mels, 0), np.float32)
        out = _power_mel(self._buffer, self._start() + np.arange(count) * self.config.hop, self.config)
        self._frames += count
        keep_from = self._start()
        self._buffer = self._buffer[keep_from:]
        self._offset += keep_from
        return out
