"""Whisper inference with faster-whisper: n-best recognition of utterances, timed transcripts, and
teacher-forced scoring of candidate texts (the second pass).

One ``WhisperEngine`` is shared by every request (it holds no per-request state);
calls are blocking and run on the inference pool's threads.

Hotwords (names, product words, jargon) bias Whisper the way it can be biased: they are its prompt
(faster-whisper's ``hotwords``: after ``<|startofprev|>``, before any previous text), in every 30 s
window, and the second pass scores candidates under the same prompt.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import ctranslate2
import numpy as np
import tokenizers
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations
from faster_whisper.vad import VadOptions, get_speech_timestamps

from cloud_server.model_store import ModelLocation
from cloud_server.pilot import verified_prefix
from cloud_server.results import (
    DEFAULT_HOTWORD_PROMPT_TOKENS,
    Hypothesis,
    PilotHypothesis,
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
# Candidates scored in one generate() call: the decoder's cross-attention keys and values over the
# 1500 encoder frames are computed per batch row, so wide batches only add memory (measured: 4 rows
# cost ~0.08 s each on 2 threads, 8 rows cost more per row than single calls).
_SCORE_BATCH = 4
_WINDOW_SAMPLES = 30 * SAMPLE_RATE
# The second pass ranks the cloud's 3 best with the edge's list, as scripts/eval_second_pass.py fitted it.
SECOND_PASS_CLOUD_N_BEST = 3
SECOND_PASS_MAX_EDGE = 8


class RequestCancelledError(Exception):
    """The caller went away (deadline, disconnect); the work was abandoned."""


@dataclass(frozen=True)
class _WindowHypothesis:
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...]


@dataclass(frozen=True)
class _Generated:
    """What one window's generate() gave, with the pilot tokens it was started from."""

    sequences: list[list[int]]
    scores: list[float]
    """generate()'s scores: the log-prob of the tokens it chose (not of a forced prefix) over the length."""
    no_speech_prob: float
    prefix: int
    """Verified pilot tokens every sequence starts with."""
    prefix_logprob: float
    """Their summed log-probability (under the distributions generate() decodes from)."""


@dataclass(frozen=True)
class TextScore:
    """How likely Whisper finds one candidate text for an utterance (teacher-forced)."""

    text: str
    sum_logprob: float
    """log P(text tokens, then end-of-text | audio, prompt): the end-of-text token is scored, so a
    candidate that stops early pays for it."""
    avg_logprob: float
    """``sum_logprob / (len(tokens) + 1)``: the same normalisation as ``Hypothesis.avg_logprob``."""
    tokens: tuple[int, ...]
    """The text's Whisper tokens (without special tokens)."""


@dataclass(frozen=True)
class EdgeCandidate:
    """One hypothesis of the edge's n-best, as the EdgeContext carries it."""

    text: str
    log_prob: float
    """Summed token log-probability under the edge model."""


@dataclass(frozen=True)
class CandidateFeatures:
    """What the second pass knows about one candidate text."""

    text: str
    whisper: float
    """Whisper's teacher-forced ``avg_logprob`` of the text."""
    edge: float | None
    """The edge's log-prob per Whisper token (``log_prob / (tokens + 1)``) when the edge listed the text."""
    both: bool
    """Both lists hold the text (up to casing and punctuation)."""
    edge_best: bool
    cloud_best: bool


@dataclass(frozen=True)
class SecondPassWeights:
    """Weights of the second pass's combined score (fitted by ``scripts/eval_second_pass.py``)."""

    whisper: float = 1.0
    edge: float = 0.0
    edge_default: float = 0.0
    """Stands in for the edge feature of a text the edge did not list."""
    both: float = 0.0
    edge_best: float = 0.0
    cloud_best: float = 0.0
    model: str | None = None
    """The cloud model the weights were fitted with (they are not tuned for another)."""

    VERSION = 1

    @classmethod
    def load(cls, path: Path) -> SecondPassWeights:
        """Read a weights file: ``{"version": 1, "model": ..., "weights": {...}}``; other keys document
        the fit."""
        document = json.loads(path.read_text())
        if document.get("version") != cls.VERSION:
            raise ValueError(f"{path}: unsupported second-pass weights version {document.get('version')!r}")
        weights = {name: float(value) for name, value in document["weights"].items()}
        return cls(**weights, model=document.get("model"))

    def combine(self, f: CandidateFeatures) -> float:
        edge = self.edge_default if f.edge is None else f.edge
        return (
            self.whisper * f.whisper
            + self.edge * edge
            + self.both * f.both
            + self.edge_best * f.edge_best
            + self.cloud_best * f.cloud_best
        )


def candidate_features(
    cloud_texts: Sequence[str], edge: Sequence[EdgeCandidate], scores: Mapping[str, TextScore]
) -> list[CandidateFeatures]:
    """The distinct candidate texts, the cloud's first (so ties go to the cloud's order), with features.

    ``scores`` maps every text of both lists to its Whisper score. Lists are matched on
    ``dedupe_key`` (casing and punctuation do not count); each distinct exact text is a candidate.
    """
    edge_keys = [dedupe_key(h.text) for h in edge]
    cloud_keys = [dedupe_key(t) for t in cloud_texts]
    edge_per_token: dict[str, float] = {}
    for h, key in zip(edge, edge_keys, strict=True):
        value = h.log_prob / (len(scores[h.text].tokens) + 1)
        edge_per_token[key] = max(value, edge_per_token.get(key, -math.inf))
    out = []
    for text in dict.fromkeys([*cloud_texts, *(h.text for h in edge)]):
        key = dedupe_key(text)
        out.append(
            CandidateFeatures(
                text=text,
                whisper=scores[text].avg_logprob,
                edge=edge_per_token.get(key),
                both=key in edge_per_token and key in cloud_keys,
                edge_best=bool(edge_keys) and key == edge_keys[0],
                cloud_best=bool(cloud_keys) and key == cloud_keys[0],
            )
        )
    return out


class WhisperEngine:
    """A loaded Whisper model plus the decoding recipes the servers use."""

    def __init__(
        self,
        location: ModelLocation,
        *,
        compute_type: str,
        cpu_threads: int,
        workers: int,
        hotword_prompt_tokens: int = DEFAULT_HOTWORD_PROMPT_TOKENS,
    ) -> None:
        self.name = location.name
        self.hotword_prompt_tokens = hotword_prompt_tokens
        self._model = WhisperModel(
            str(location.path),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=workers,
            local_files_only=True,
        )
        self._model.hf_tokenizer = _repair_tokenizer(self._model.hf_tokenizer)
        self.multilingual: bool = bool(self._model.model.is_multilingual)
        self.languages: tuple[str, ...] = tuple(self._model.supported_languages)
        config = json.loads((location.path / "config.json").read_text())
        # The ids generate() masks: suppress_tokens=[-1] means config["suppress_ids"] at every step,
        # suppress_blank means config["suppress_ids_begin"] (blank, end-of-text) at the first step.
        self._suppress_ids = np.asarray(config.get("suppress_ids", []), dtype=np.int64)
        self._suppress_ids_begin = np.asarray(config.get("suppress_ids_begin", []), dtype=np.int64)

    # -- n-best recognition (gRPC) -------------------------------------------------------

    def recognize(
        self,
        audio: np.ndarray,
        options: RecognizeOptions,
        cancelled: threading.Event | None = None,
        pilot: PilotHypothesis | None = None,
    ) -> Recognition:
        """Decode one utterance into up to ``options.n_best`` distinct hypotheses, best first.

        ``pilot`` is the stream's latest pilot: for audio of one window, in the pilot's language and
        with its prompt, the decode starts from the pilot tokens greedy decoding confirms on this
        audio (``_generate``). Otherwise it is ignored."""
        started = time.perf_counter()
        cancelled = cancelled or threading.Event()
        duration = len(audio) / SAMPLE_RATE
        per_window: list[tuple[float, list[_WindowHypothesis]]] = []
        reused = 0
        if len(audio) <= _WINDOW_SAMPLES:
            # One window: its encoder output serves language detection too.
            _check(cancelled)
            encoder_output, num_frames = self._encode(audio)
            language, language_probability = self._language_of(
                encoder_output, options.language, options.languages
            )
            tokenizer = self._tokenizer(language)
            pilot_tokens = self._pilot_tokens(pilot, language, options)
            hyps, reused = self._decode_encoded(
                encoder_output, num_frames, 0.0, tokenizer, options, cancelled, pilot_tokens
            )
            per_window.append((duration, hyps))
        else:
            windows = self._windows(audio)
            language, language_probability = self._language(
                audio, windows, options.language, options.languages
            )
            tokenizer = self._tokenizer(language)
            for start, end in windows:
                _check(cancelled)
                hyps = self._decode_window(
                    audio[start:end], start / SAMPLE_RATE, tokenizer, options, cancelled
                )
                per_window.append(((end - start) / SAMPLE_RATE, hyps))
        hypotheses = _combine(per_window, options.n_best)
        return Recognition(
            hypotheses=tuple(hypotheses),
            language=language,
            language_probability=language_probability,
            audio_seconds=duration,
            model=self.name,
            processing_seconds=time.perf_counter() - started,
            pilot_tokens=reused,
            pilot_audio_seconds=pilot.samples / SAMPLE_RATE if pilot else 0.0,
        )

    def pilot(
        self, audio: np.ndarray, options: RecognizeOptions, cancelled: threading.Event | None = None
    ) -> PilotHypothesis:
        """A pilot: the greedy decode of the audio a stream has received so far (at most 30 s).

        Checks ``cancelled`` between model calls, so a request arriving meanwhile waits for one call
        at most (the encoder or the decode)."""
        if len(audio) > _WINDOW_SAMPLES:
            raise ValueError(f"a pilot takes at most 30 s of audio, got {len(audio) / SAMPLE_RATE:.1f} s")
        started = time.perf_counter()
        cancelled = cancelled or threading.Event()
        _check(cancelled)
        encoder_output, _ = self._encode(audio)
        _check(cancelled)
        language, _ = self._language_of(encoder_output, options.language, options.languages)
        tokenizer = self._tokenizer(language)
        _check(cancelled)
        result = self._model.model.generate(
            encoder_output,
            [self._prompt(tokenizer, options)],
            beam_size=1,
            return_scores=True,
            return_no_speech_prob=True,
            max_length=self._model.max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        tokens = tuple(t for t in result.sequences_ids[0] if t < tokenizer.eot)
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > _NO_SPEECH_THRESHOLD and avg_logprob < _LOGPROB_THRESHOLD:
            tokens = ()  # what the final would blank as silence is no head start
        return PilotHypothesis(
            tokens=tokens,
            language=language,
            prompt=options.prompt,
            samples=len(audio),
            processing_seconds=time.perf_counter() - started,
            hotwords=options.hotwords,
        )

    def _pilot_tokens(
        self, pilot: PilotHypothesis | None, language: str, options: RecognizeOptions
    ) -> tuple[int, ...]:
        """The pilot's tokens when a final may start from them: decoded in the same language with the
        same prompt and hotwords (the tokens are verified against this audio either way)."""
        if pilot is None or pilot.language != language or pilot.prompt != options.prompt:
            return ()
        if pilot.hotwords != options.hotwords:
            return ()
        return pilot.tokens[: self._max_scored_tokens]

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

    def _language_of(
        self, encoder_output: ctranslate2.StorageView, requested: str | None, allowed: Sequence[str] = ()
    ) -> tuple[str, float]:
        """The language of one encoded window: what faster-whisper's ``detect_language`` finds for the
        same audio (it encodes it again), from the encoder output already at hand; among ``allowed``
        when given."""
        if not self.multilingual:
            return "en", 1.0
        if requested:
            return requested, 1.0
        scores = self._model.model.detect_language(encoder_output)[0]
        return pick_language([(str(token)[2:-2], float(p)) for token, p in scores], allowed)

    def _language(
        self,
        audio: np.ndarray,
        windows: list[tuple[int, int]],
        requested: str | None,
        allowed: Sequence[str] = (),
    ) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        if requested:
            return requested, 1.0
        first = audio[windows[0][0] : windows[0][1]] if windows else audio
        _, _, scores = self._model.detect_language(audio=first)
        return pick_language([(str(code), float(p)) for code, p in scores], allowed)

    def _decode_window(
        self,
        audio: np.ndarray,
        offset: float,
        tokenizer: Tokenizer,
        options: RecognizeOptions,
        cancelled: threading.Event,
    ) -> list[_WindowHypothesis]:
        encoder_output, num_frames = self._encode(audio)
        return self._decode_encoded(encoder_output, num_frames, offset, tokenizer, options, cancelled)[0]

    def _encode(self, audio: np.ndarray) -> tuple[ctranslate2.StorageView, int]:
        """Encoder output of one (padded) 30 s window, and the number of frames holding audio."""
        features = self._model.feature_extractor(audio)
        num_frames = min(features.shape[-1], self._model.feature_extractor.nb_max_frames)
        return self._model.encode(pad_or_trim(features)), num_frames

    def _decode_encoded(
        self,
        encoder_output: ctranslate2.StorageView,
        num_frames: int,
        offset: float,
        tokenizer: Tokenizer,
        options: RecognizeOptions,
        cancelled: threading.Event,
        pilot: Sequence[int] = (),
    ) -> tuple[list[_WindowHypothesis], int]:
        """The window's hypotheses, and how many verified ``pilot`` tokens they start with."""
        prompt = self._prompt(tokenizer, options)
        n_best = max(1, options.n_best)
        # Keep every finished beam, from a beam twice as wide as the list asked for: many beams
        # differ only in casing or punctuation and are dropped below.
        beam_size = max(options.beam_size, 2 * n_best if n_best > 1 else 1)
        decoded = self._generate(encoder_output, prompt, beam_size, pilot, cancelled)
        no_speech = decoded.no_speech_prob
        seen: set[str] = set()
        out: list[_WindowHypothesis] = []
        for tokens, score in zip(decoded.sequences, decoded.scores, strict=True):
            text_tokens = [t for t in tokens if t < tokenizer.eot]
            text = tokenizer.decode(text_tokens).strip()
            # generate()'s score leaves a forced prefix out: its log-prob is added back.
            avg_logprob = (decoded.prefix_logprob + float(score) * len(text_tokens)) / (len(text_tokens) + 1)
            if no_speech > _NO_SPEECH_THRESHOLD and avg_logprob < _LOGPROB_THRESHOLD:
                text, text_tokens = "", []
            key = dedupe_key(text)
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
        return out, decoded.prefix

    def _prompt(self, tokenizer: Tokenizer, options: RecognizeOptions) -> list[int]:
        previous = tokenizer.encode(" " + options.prompt.strip()) if options.prompt else []
        return list(
            self._model.get_prompt(
                tokenizer, previous, without_timestamps=True, hotwords=self.hotword_prompt(options.hotwords)
            )
        )

    def _generate(
        self,
        encoder_output: ctranslate2.StorageView,
        prompt: list[int],
        beam_size: int,
        pilot: Sequence[int],
        cancelled: threading.Event,
    ) -> _Generated:
        """generate() for one window; with ``pilot`` tokens, from the longest prefix of them that
        greedy decoding of this window would choose itself (teacher-forced on it, masked as generate()
        masks), so a greedy decode gives what it gives without a pilot.

        CTranslate2 feeds a forced prefix through the decoder one step at a time, as fast as it
        decodes (measured on Whisper base); the greedy case therefore verifies and continues in a
        single call when the whole pilot holds, and calls again from the verified prefix when not.
        A wider beam verifies first (``_forced_logits``), then searches from the verified prefix: every
        hypothesis of the n-best then starts with those tokens, where a search without a pilot might
        have kept alternatives that differ in them.
        """
        options = {
            "return_scores": True,
            "return_no_speech_prob": True,
            "max_length": self._model.max_length,
            "suppress_tokens": [-1],
        }
        generate = self._model.model.generate
        prefix: Sequence[int] = ()
        prefix_logprob = 0.0
        if pilot:
            pilot = list(pilot)
            if beam_size == 1:
                result = generate(
                    encoder_output,
                    [prompt + pilot],
                    beam_size=1,
                    return_logits_vocab=True,
                    suppress_blank=False,
                    **options,
                )[0]
                rows = np.stack(
                    [np.asarray(row, dtype=np.float32).reshape(-1) for row in result.logits[0][: len(pilot)]]
                )
                verified, prefix_logprob = verified_prefix(
                    rows, pilot, self._suppress_ids, self._suppress_ids_begin
                )
                if verified == len(pilot):
                    return _Generated(
                        [list(s) for s in result.sequences_ids],
                        [float(x) for x in result.scores],
                        float(result.no_speech_prob),
                        verified,
                        prefix_logprob,
                    )
            else:
                rows = self._forced_logits(np.asarray(encoder_output), prompt, [tuple(pilot)])[0]
                verified, prefix_logprob = verified_prefix(
                    rows, pilot, self._suppress_ids, self._suppress_ids_begin
                )
            prefix = pilot[:verified]
            _check(cancelled)
        result = generate(
            encoder_output,
            [prompt + list(prefix)],
            beam_size=beam_size,
            num_hypotheses=beam_size,
            # The blank/end-of-text mask belongs to the first token only; generate() would apply
            # it to the first token after a prefix, which the decode without a pilot never does.
            suppress_blank=not prefix,
            **options,
        )[0]
        return _Generated(
            [list(s) for s in result.sequences_ids],
            [float(x) for x in result.scores],
            float(result.no_speech_prob),
            len(prefix),
            prefix_logprob,
        )

    def _align(
        self, tokenizer: Tokenizer, tokens: list[int], encoder_output: object, num_frames: int, offset: float
    ) -> tuple[Word, ...]:
        if num_frames < 2:
            # Under one encoder frame (20 ms) of audio there is nothing to align to: CTranslate2 returns
            # no alignment and find_alignment raised IndexError, so a 10 ms request with word timestamps
            # failed as UNKNOWN (found by tests/test_fuzz_cloud.py). Such hypotheses get no word times.
            return ()
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

    # -- second pass: scoring candidate texts ------------------------------------------------

    def score(
        self, audio: np.ndarray, texts: Sequence[str], language: str = "en", hotwords: Sequence[str] = ()
    ) -> list[TextScore]:
        """Teacher-forced log-likelihood of each candidate text under Whisper given the audio.

        One encoder pass; then each candidate is forced token by token as the decoder's prefix
        (``generate`` with the text after ``<|notimestamps|>``), and the returned per-step logits
        are turned into log-probabilities under exactly the distribution ``recognize()`` decodes
        from: the model config's suppressed ids masked at every step, blank and end-of-text at the
        first. Whisper's own hypothesis therefore scores what ``generate`` reported for it. A token
        the mask would forbid (a suppressed symbol in an edge text) is unmasked for that candidate
        rather than scored as impossible; an empty candidate is scored as end-of-text at the first
        step without the blank mask.

        Only one 30 s window is supported (utterances): longer audio raises ``ValueError``.
        Results are in the order of ``texts``.
        """
        if len(audio) > _WINDOW_SAMPLES:
            raise ValueError(
                f"score() takes at most 30 s of audio, got {len(audio) / SAMPLE_RATE:.1f} s; "
                "split the utterance first"
            )
        tokenizer = self._tokenizer(language)
        token_lists = [self._tokens(tokenizer, text) for text in texts]
        limit = self._max_scored_tokens
        for text, tokens in zip(texts, token_lists, strict=True):
            if len(tokens) > limit:
                raise ValueError(f"candidate of {len(tokens)} tokens is above the limit of {limit}: {text!r}")
        if not texts:
            return []
        encoder_output, _ = self._encode(audio)
        return self._score_encoded(encoder_output, tokenizer, texts, token_lists, hotwords)

    @property
    def _max_scored_tokens(self) -> int:
        # generate() decodes at most max_length // 2 steps: the text's tokens and end-of-text.
        return int(self._model.max_length) // 2 - 1

    def _tokenizer(self, language: str | None) -> Tokenizer:
        language = (language or "en") if self.multilingual else "en"
        return Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe", language=language)

    @staticmethod
    def _tokens(tokenizer: Tokenizer, text: str) -> tuple[int, ...]:
        # Whisper writes a space before the first word of a transcript.
        return tuple(tokenizer.encode(" " + text.strip())) if text.strip() else ()

    def _score_encoded(
        self,
        encoder_output: ctranslate2.StorageView,
        tokenizer: Tokenizer,
        texts: Sequence[str],
        token_lists: Sequence[tuple[int, ...]],
        hotwords: Sequence[str] = (),
    ) -> list[TextScore]:
        # Under the prompt the candidates were decoded with: a hotword an edge text spells right is
        # as likely to Whisper as in its own hypotheses.
        prompt = self._model.get_prompt(
            tokenizer, [], without_timestamps=True, hotwords=self.hotword_prompt(hotwords)
        )
        encoded = np.asarray(encoder_output)
        sums: dict[tuple[int, ...], float] = {}
        distinct = sorted(set(token_lists), key=len)
        for start in range(0, len(distinct), _SCORE_BATCH):
            batch = distinct[start : start + _SCORE_BATCH]
            steps = self._forced_logits(encoded, prompt, batch)
            for tokens, logits in zip(batch, steps, strict=True):
                sums[tokens] = self._sum_logprob(tokens, logits, tokenizer.eot)
        return [
            TextScore(text, sums[tokens], sums[tokens] / (len(tokens) + 1), tokens)
            for text, tokens in zip(texts, token_lists, strict=True)
        ]

    def _forced_logits(
        self, encoded: np.ndarray, prompt: list[int], batch: Sequence[tuple[int, ...]]
    ) -> list[np.ndarray]:
        """Raw next-token logits ``[len(tokens) + 1, vocab]`` for each forced token sequence."""
        longest = max(len(tokens) for tokens in batch)
        # generate() decodes at most min(max_length // 2, max_length - len(prompt) + 1) steps,
        # counting the forced ones: stop right after the step that predicts end-of-text.
        steps = longest + 1
        max_length = max(2 * steps, steps + len(prompt) - 1)
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(encoded, len(batch), 0)))
        results = self._model.model.generate(
            features,
            [prompt + list(tokens) for tokens in batch],
            beam_size=1,
            max_length=max_length,
            return_logits_vocab=True,
            suppress_blank=False,
            suppress_tokens=[],
        )
        out = []
        for tokens, result in zip(batch, results, strict=True):
            rows = result.logits[0][: len(tokens) + 1]
            if len(rows) != len(tokens) + 1 or list(result.sequences_ids[0][: len(tokens)]) != list(tokens):
                raise RuntimeError("generate() did not follow the forced prefix")  # a CTranslate2 change
            out.append(np.stack([np.asarray(row, dtype=np.float32).reshape(-1) for row in rows]))
        return out

    def _sum_logprob(self, tokens: tuple[int, ...], logits: np.ndarray, eot: int) -> float:
        targets = np.asarray((*tokens, eot), dtype=np.int64)
        logits = logits.astype(np.float64)
        masked = np.setdiff1d(self._suppress_ids, targets)
        logits[:, masked] = -np.inf
        if tokens:  # an empty candidate is end-of-text at step 0: the blank mask would forbid it
            logits[0, np.setdiff1d(self._suppress_ids_begin, targets[:1])] = -np.inf
        peak = logits.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        picked = logits[np.arange(len(targets)), targets]
        return float((picked - log_norm).sum())

    def recognize_with_edge(
        self,
        audio: np.ndarray,
        options: RecognizeOptions,
        edge: Sequence[EdgeCandidate],
        weights: SecondPassWeights,
        cancelled: threading.Event | None = None,
        pilot: PilotHypothesis | None = None,
    ) -> Recognition:
        """The second pass: the cloud's 3 best and the edge's n-best, ranked by ``weights`` over
        Whisper's teacher-forced scores (one encoder pass for decoding, scoring and word times).

        Each hypothesis reports Whisper's own view of its text: ``avg_logprob`` is the text's
        teacher-forced score and ``confidence`` is ``confidence_of(avg_logprob, no_speech_prob)``
        (what a cloud hypothesis always meant), so an edge text the ranking put first is not made
        to look more certain than Whisper finds it; the order is the combined score's, and the
        confidences need not decrease along it. Without edge hypotheses, or for audio over 30 s
        (several windows), this is plain ``recognize()``. Edge texts beyond the first
        ``SECOND_PASS_MAX_EDGE`` or too long to score are ignored. The cloud's candidates start from
        ``pilot`` as in ``recognize()``.
        """
        if not edge or len(audio) > _WINDOW_SAMPLES:
            return self.recognize(audio, options, cancelled, pilot)
        started = time.perf_counter()
        cancelled = cancelled or threading.Event()
        encoder_output, num_frames = self._encode(audio)
        language, language_probability = self._language_of(
            encoder_output, options.language, options.languages
        )
        tokenizer = self._tokenizer(language)
        wide = replace(options, n_best=max(options.n_best, SECOND_PASS_CLOUD_N_BEST), word_timestamps=False)
        pilot_tokens = self._pilot_tokens(pilot, language, options)
        cloud, reused = self._decode_encoded(
            encoder_output, num_frames, 0.0, tokenizer, wide, cancelled, pilot_tokens
        )
        _check(cancelled)
        tokens = {h.text: self._tokens(tokenizer, h.text) for h in edge[:SECOND_PASS_MAX_EDGE]}
        usable = [h for h in edge[:SECOND_PASS_MAX_EDGE] if len(tokens[h.text]) <= self._max_scored_tokens]
        texts = list(dict.fromkeys([*(h.text for h in cloud), *(h.text for h in usable)]))
        # Every candidate is scored, the cloud's too: the canonical tokens of its text, teacher-forced
        # (as the weights were fitted; int8 beam search's own scores are ~1e-2 per token off).
        token_lists = [tokens.get(t) or self._tokens(tokenizer, t) for t in texts]
        scored = self._score_encoded(encoder_output, tokenizer, texts, token_lists, options.hotwords)
        scores = dict(zip(texts, scored, strict=True))
        features = candidate_features([h.text for h in cloud], usable, scores)
        ranked = sorted(features, key=weights.combine, reverse=True)  # stable: ties keep the cloud first
        no_speech = cloud[0].no_speech_prob if cloud else 0.0
        hypotheses: list[Hypothesis] = []
        seen: set[str] = set()
        for f in ranked:
            key = dedupe_key(f.text)
            if key in seen:
                continue
            seen.add(key)
            words: tuple[Word, ...] = ()
            if options.word_timestamps and scores[f.text].tokens:
                _check(cancelled)
                words = self._align(tokenizer, list(scores[f.text].tokens), encoder_output, num_frames, 0.0)
            hypotheses.append(
                Hypothesis(f.text, confidence_of(f.whisper, no_speech), f.whisper, no_speech, words)
            )
            if len(hypotheses) == max(1, options.n_best):
                break
        return Recognition(
            hypotheses=tuple(hypotheses),
            language=language,
            language_probability=language_probability,
            audio_seconds=len(audio) / SAMPLE_RATE,
            model=self.name,
            processing_seconds=time.perf_counter() - started,
            pilot_tokens=reused,
            pilot_audio_seconds=pilot.samples / SAMPLE_RATE if pilot else 0.0,
        )

    def hotword_prompt(self, hotwords: Sequence[str]) -> str | None:
        """The prompt text of a hotword list: its phrases in the given order while they fit
        ``hotword_prompt_tokens`` (0: Whisper's whole prompt window). A long list of names conditions
        Whisper to hear names everywhere: the full 100-phrase list (~400 tokens, cut to the window) cost
        1.6 WER points on ordinary tuning sentences in a first run; on 168 ordinary tuning clips the first
        96 tokens' worth cost 0.1 points (64 tokens 0.3, 48 tokens 0.4: shorter is not safer), yet 1.4 on
        the held-out ones, so no budget makes an unrelated list free: the gRPC service first drops the
        phrases the edge's hypotheses do not spell (``cloud_server.hotword_filter``). Every list of the
        usual size (15-20 phrases, 52-86 tokens) fits 96 whole (BENCHMARKS.md, hotwords)."""
        text = hotword_text(hotwords)
        limit = self.hotword_prompt_tokens or int(self._model.max_length) // 2 - 1
        if text is None or self._count_tokens(text) <= limit:
            return text
        kept: list[str] = []
        for phrase in hotwords:
            if self._count_tokens(", ".join((*kept, phrase))) > limit:
                break
            kept.append(phrase)
        log.debug("hotword prompt keeps %d of %d phrases (%d tokens)", len(kept), len(hotwords), limit)
        return hotword_text(kept)

    def _count_tokens(self, text: str) -> int:
        return len(self._model.hf_tokenizer.encode(" " + text, add_special_tokens=False).ids)

    # -- timed transcripts (REST) ------------------------------------------------------

    def _prompt_tail(self, prompt: str | None) -> str | None:
        """The end of a prompt that fits Whisper's context (223 tokens), as OpenAI's API keeps it;
        faster-whisper would keep the start of an over-long hotword text."""
        if not prompt or not prompt.strip():
            return None
        keep = int(self._model.max_length) // 2 - 1
        ids = self._model.hf_tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids
        if len(ids) <= keep:
            return prompt
        return str(self._model.hf_tokenizer.decode(ids[-keep:])).strip()

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
            # As hotwords, the prompt conditions every window; as initial_prompt it conditioned only the
            # first (condition_on_previous_text is off).
            hotwords=self._prompt_tail(options.prompt),
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


def pick_language(scores: Sequence[tuple[str, float]], allowed: Sequence[str] = ()) -> tuple[str, float]:
    """The most probable language of Whisper's detection ``(code, probability)``, among ``allowed`` when
    given (its probability is Whisper's, over every language: not renormalized over the list). When no
    allowed language was scored at all, the most probable overall."""
    if not scores:
        raise ValueError("no language scores")
    among = [s for s in scores if s[0] in allowed] if allowed else list(scores)
    return max(among or scores, key=lambda s: s[1])


def hotword_text(hotwords: Sequence[str]) -> str | None:
    """The prompt text of a list of phrases (None for none): "Kubernetes, Okonkwo, Tallinn"."""
    return ", ".join(hotwords) if hotwords else None


def _repair_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """Restore the BPE merge ``Ġ t`` when a tokenizer.json lost it.

    The bundled base model's tokenizer.json has 49,999 merges: the first one of Whisper's list
    (``Ġ t``, which makes token 256 ``Ġt``) is missing, so " the" encodes as ``Ġ`` + ``the`` instead
    of ``Ġthe`` and encoding a text does not give back the tokens Whisper generates for it (prompts
    and the second pass's scores were off). Decoding is unaffected. A sound tokenizer is returned as is.
    """
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model", {})
    merges = model.get("merges")
    if model.get("type") != "BPE" or "Ġt" not in model.get("vocab", {}) or not merges:
        return tokenizer
    as_pairs = isinstance(merges[0], list)
    if any((m if as_pairs else m.split(" ")) == ["Ġ", "t"] for m in merges):
        return tokenizer
    merges.insert(0, ["Ġ", "t"] if as_pairs else "Ġ t")
    log.info("tokenizer.json lacks the BPE merge 'Ġ t': restored it")
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


def dedupe_key(text: str) -> str:
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
        if dedupe_key(text) not in seen_texts:
            seen_texts.add(dedupe_key(text))
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
