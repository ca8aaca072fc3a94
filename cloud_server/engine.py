"""Whisper inference with faster-whisper: n-best recognition of utterances and timed transcripts.

One ``WhisperEngine`` is shared by every request (it holds no per-request state);
calls are blocking and run on the inference pool's threads.
"""

from __future__ import annotations

import heapq
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations
from faster_whisper.vad import VadOptions, get_speech_timestamps

from cloud_server.model_store import ModelLocation
from cloud_server.results import (
    Hypothesis,
    Recognition,
    RecognizeOptions,
    Segment,
    TranscribeOptions,
    Transcript,
    Word,
)

SAMPLE_RATE = 16000
log = logging.getLogger(__name__)

# Same rule as faster-whisper's transcribe(): a window the model thinks is silent
# and decodes with low likelihood is silence, not text.
_NO_SPEECH_THRESHOLD = 0.6
_LOGPROB_THRESHOLD = -1.0
_PUNCTUATION = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")
_PREPEND_PUNCTUATIONS = "\"'“¿([{-"
_APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


class RequestCancelledError(Exception):
    """The caller went away (deadline, disconnect); the work was abandoned."""


@dataclass(frozen=True)
class _WindowHypothesis:
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...]


class WhisperEngine:
    """A loaded Whisper model plus the decoding recipes the servers use."""

    def __init__(self, location: ModelLocation, *, compute_type: str, cpu_threads: int, workers: int) -> None:
        self.name = location.name
        self._model = WhisperModel(
            str(location.path),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=workers,
            local_files_only=True,
        )
        self.multilingual: bool = bool(self._model.model.is_multilingual)
        self.languages: tuple[str, ...] = tuple(self._model.supported_languages)

    # -- n-best recognition (gRPC) -------------------------------------------------------

    def recognize(
        self, audio: np.ndarray, options: RecognizeOptions, cancelled: threading.Event | None = None
    ) -> Recognition:
        """Decode one utterance into up to ``options.n_best`` distinct hypotheses, best first."""
        started = time.perf_counter()
        cancelled = cancelled or threading.Event()
        duration = len(audio) / SAMPLE_RATE
        windows = self._windows(audio)
        language, language_probability = self._language(audio, windows, options.language)
        tokenizer = Tokenizer(
            self._model.hf_tokenizer, self.multilingual, task="transcribe", language=language
        )
        per_window: list[tuple[float, list[_WindowHypothesis]]] = []
        for start, end in windows:
            _check(cancelled)
            hyps = self._decode_window(audio[start:end], start / SAMPLE_RATE, tokenizer, options, cancelled)
            per_window.append(((end - start) / SAMPLE_RATE, hyps))
        hypotheses = _combine(per_window, options.n_best)
        return Recognition(
            hypotheses=tuple(hypotheses),
            language=language,
            language_probability=language_probability,
            audio_seconds=duration,
            model=self.name,
            processing_seconds=time.perf_counter() - started,
        )

    def _windows(self, audio: np.ndarray, max_seconds: float = 30.0) -> list[tuple[int, int]]:
        """Windows of at most 30 s on the original timeline, cut at pauses the VAD finds."""
        if len(audio) <= max_seconds * SAMPLE_RATE:
            return [(0, len(audio))]
        speech = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=max_seconds - 1))
        limit = int(max_seconds * SAMPLE_RATE)
        windows: list[list[int]] = []
        for region in speech:
            if windows and region["end"] - windows[-1][0] <= limit:
                windows[-1][1] = region["end"]
            else:
                windows.append([region["start"], region["end"]])
        return [(s, e) for s, e in windows]

    def _language(
        self, audio: np.ndarray, windows: list[tuple[int, int]], requested: str | None
    ) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        if requested:
            return requested, 1.0
        first = audio[windows[0][0] : windows[0][1]] if windows else audio
        language, probability, _ = self._model.detect_language(audio=first)
        return str(language), float(probability)

    def _decode_window(
        self,
        audio: np.ndarray,
        offset: float,
        tokenizer: Tokenizer,
        options: RecognizeOptions,
        cancelled: threading.Event,
    ) -> list[_WindowHypothesis]:
        features = self._model.feature_extractor(audio)
        num_frames = min(features.shape[-1], self._model.feature_extractor.nb_max_frames)
        encoder_output = self._model.encode(pad_or_trim(features))
        previous = tokenizer.encode(" " + options.prompt.strip()) if options.prompt else []
        prompt = self._model.get_prompt(tokenizer, previous, without_timestamps=True)
        n_best = max(1, options.n_best)
        # Keep every finished beam, from a beam twice as wide as the list asked for: many beams
        # differ only in casing or punctuation and are dropped below.
        beam_size = max(options.beam_size, 2 * n_best if n_best > 1 else 1)
        result = self._model.model.generate(
            encoder_output,
            [prompt],
            beam_size=beam_size,
            num_hypotheses=beam_size,
            return_scores=True,
            return_no_speech_prob=True,
            max_length=self._model.max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        no_speech = float(result.no_speech_prob)
        seen: set[str] = set()
        out: list[_WindowHypothesis] = []
        for tokens, score in zip(result.sequences_ids, result.scores, strict=True):
            text_tokens = [t for t in tokens if t < tokenizer.eot]
            text = tokenizer.decode(text_tokens).strip()
            avg_logprob = float(score) * len(text_tokens) / (len(text_tokens) + 1)
            if no_speech > _NO_SPEECH_THRESHOLD and avg_logprob < _LOGPROB_THRESHOLD:
                text, text_tokens = "", []
            key = _dedupe_key(text)
            if key in seen:
                continue
            seen.add(key)
            words: tuple[Word, ...] = ()
            if options.word_timestamps and text_tokens:
                _check(cancelled)
                words = self._align(tokenizer, text_tokens, encoder_output, num_frames, offset)
            out.append(_WindowHypothesis(text, tuple(text_tokens), avg_logprob, no_speech, words))
            if len(out) == n_best:
                break
        return out

    def _align(
        self, tokenizer: Tokenizer, tokens: list[int], encoder_output: object, num_frames: int, offset: float
    ) -> tuple[Word, ...]:
        alignment = self._model.find_alignment(tokenizer, [tokens], encoder_output, num_frames)[0]
        merge_punctuations(alignment, _PREPEND_PUNCTUATIONS, _APPEND_PUNCTUATIONS)
        return tuple(
            Word(
                word=str(w["word"]).strip(),
                start=round(offset + float(w["start"]), 3),
                end=round(offset + float(w["end"]), 3),
                probability=float(w["probability"]),
            )
            for w in alignment
            if w["word"]
        )

    # -- timed transcripts (REST) ------------------------------------------------------

    def transcribe(
        self,
        audio: np.ndarray,
        options: TranscribeOptions,
        cancelled: threading.Event | None = None,
        long_audio_s: float = 30.0,
    ) -> Transcript:
        """Transcribe a whole file into timed segments. Long audio is cut at pauses by the VAD."""
        started = time.perf_counter()
        cancelled = cancelled or threading.Event()
        duration = len(audio) / SAMPLE_RATE
        language = options.language if self.multilingual else "en"
        segments_iter, info = self._model.transcribe(
            audio,
            language=language or None,
            task="transcribe",
            beam_size=options.beam_size,
            temperature=list(options.temperatures),
            initial_prompt=options.prompt or None,
            word_timestamps=options.word_timestamps,
            condition_on_previous_text=False,
            vad_filter=duration > long_audio_s,
        )
        segments: list[Segment] = []
        for seg in segments_iter:
            _check(cancelled)
            segments.append(
                Segment(
                    id=len(segments),
                    seek=int(seg.seek),
                    start=float(seg.start),
                    end=float(seg.end),
                    text=str(seg.text),
                    tokens=tuple(int(t) for t in seg.tokens),
                    temperature=float(seg.temperature or 0.0),
                    avg_logprob=float(seg.avg_logprob),
                    compression_ratio=float(seg.compression_ratio),
                    no_speech_prob=float(seg.no_speech_prob),
                    words=tuple(
                        Word(str(w.word).strip(), float(w.start), float(w.end), float(w.probability))
                        for w in (seg.words or [])
                    ),
                )
            )
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            segments=tuple(segments),
            language=str(info.language),
            language_probability=float(info.language_probability),
            duration=duration,
            model=self.name,
            processing_seconds=time.perf_counter() - started,
        )


def _dedupe_key(text: str) -> str:
    """Hypotheses that differ only in casing or punctuation count as one (the better-scored is kept)."""
    return " ".join(_PUNCTUATION.sub(" ", text.casefold()).split())


def _check(cancelled: threading.Event) -> None:
    if cancelled.is_set():
        raise RequestCancelledError("request cancelled")


def confidence_of(avg_logprob: float, no_speech_prob: float) -> float:
    """Geometric-mean token probability, discounted by the chance the audio holds no speech."""
    return max(0.0, min(1.0, math.exp(avg_logprob) * (1.0 - no_speech_prob)))


def _combine(per_window: Sequence[tuple[float, list[_WindowHypothesis]]], n_best: int) -> list[Hypothesis]:
    """The n best joint hypotheses over windows, ranked by duration-weighted avg log-prob.

    Each window's list is sorted best first, so the best joint hypotheses are found by
    a best-first walk over index tuples (the k-best of a sum of sorted lists).
    """
    lists = [(weight, hyps) for weight, hyps in per_window if hyps]
    if not lists:
        return []
    total = sum(weight for weight, _ in lists) or 1.0

    def score(index: tuple[int, ...]) -> float:
        return sum(w * hyps[i].avg_logprob for (w, hyps), i in zip(lists, index, strict=True)) / total

    start = (0,) * len(lists)
    heap = [(-score(start), start)]
    visited = {start}
    out: list[Hypothesis] = []
    seen_texts: set[str] = set()
    while heap and len(out) < n_best:
        neg, index = heapq.heappop(heap)
        parts = [hyps[i] for (_, hyps), i in zip(lists, index, strict=True)]
        text = " ".join(p.text for p in parts if p.text).strip()
        if _dedupe_key(text) not in seen_texts:
            seen_texts.add(_dedupe_key(text))
            no_speech = sum(w * p.no_speech_prob for (w, _), p in zip(lists, parts, strict=True)) / total
            out.append(
                Hypothesis(
                    text=text,
                    confidence=confidence_of(-neg, no_speech),
                    avg_logprob=-neg,
                    no_speech_prob=no_speech,
                    words=tuple(w for p in parts for w in p.words),
                )
            )
        for k in range(len(index)):
            if index[k] + 1 < len(lists[k][1]):
                nxt = (*index[:k], index[k] + 1, *index[k + 1 :])
                if nxt not in visited:
                    visited.add(nxt)
                    heapq.heappush(heap, (-score(nxt), nxt))
    return out
