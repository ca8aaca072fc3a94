"""Moonshine behind the stream interface: PASU pilot inference on a stateless encoder-decoder.

Moonshine has no streaming encoder, so a pilot (``advance``) re-encodes the utterance so far and greedy-
decodes it, verifying the previous pilot's tokens in one parallel decoder pass first; the final does the
same on the audio up to the endpoint, so after the endpoint only the encoder, one verification pass and
the tail of the decode remain. Audio past ``max_chunk_s`` is split at quiet points and decoded piece by
piece (Moonshine hallucinates past ~30 s). A stream created with hotwords biases its pilots, finals and
n-best towards them (``edge_agent.asr.hotwords``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.asr.hotwords import ContextGraph, GraphCache, spellings, token_variants
from edge_agent.asr.interface import (
    Capabilities,
    Decoded,
    Hypothesis,
    StopCheck,
    TokenInfo,
    YieldCheck,
)
from edge_agent.asr.moonshine.backend import Encoded
from edge_agent.asr.moonshine.decoding import beam_nbest, greedy_decode, words_of
from edge_agent.asr.moonshine.model import MoonshineFiles, MoonshineModel
from edge_agent.asr.moonshine.ort_convert import ModelFiles, default_model_dir, ensure_onnx_models
from edge_agent.asr.utterance_audio import UtteranceAudio
from edge_agent.audio.segmenter import split_long

RATE = 16000
HOTWORD_BONUS = 5.0
"""Log-prob added to a token that continues a hotword, tuned on held-apart sentences and voices
(``scripts/bench_hotwords.py``, BENCHMARKS.md)."""


class MoonshineRecognizer:
    """The shared Moonshine model as an ``AsrModel``."""

    def __init__(
        self, model: MoonshineModel, max_chunk_s: float = 25.0, hotword_bonus: float = HOTWORD_BONUS
    ) -> None:
        self.model = model
        self.max_chunk_s = max_chunk_s
        self.hotword_bonus = hotword_bonus
        self._graphs = GraphCache(self._graph)
        self._capabilities = Capabilities(
            native_streaming=False,
            chunk_samples=0,
            prefix_verification=True,
            n_best=True,
            max_audio_s=max_chunk_s,
            punctuation=True,
        )

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def create_stream(self, hotwords: Sequence[str] = ()) -> MoonshineStream:
        return MoonshineStream(self, self._graphs.get(hotwords))

    def _graph(self, phrases: Sequence[str]) -> ContextGraph | None:
        if self.hotword_bonus <= 0:
            return None
        return ContextGraph(token_variants(phrases, self.phrase_tokens), self.hotword_bonus)

    def phrase_tokens(self, phrase: str) -> list[list[int]]:
        """The token sequences Moonshine may emit for a phrase: each spelling (``spellings``) as a word
        of its own (after "▁") and glued to what comes before (after a hyphen or a quote)."""
        encode = self.model.encode_text
        return [encode(form, word_start) for form in spellings(phrase) for word_start in (True, False)]

    def words(self, tokens: Sequence[TokenInfo]) -> list[tuple[str, float]]:
        return words_of(self.model, tokens)


class MoonshineStream:
    def __init__(self, recognizer: MoonshineRecognizer, hotwords: ContextGraph | None = None) -> None:
        self._rec = recognizer
        self._hotwords = hotwords
        self._audio = UtteranceAudio()
        self._pilot: Decoded | None = None
        """The latest pilot: the next pilot and the final verify its tokens."""
        self._final_encoded: Encoded | None = None
        """The last final's encoder output when it was one piece (for the n-best search)."""

    @property
    def samples(self) -> int:
        return self._audio.size

    def accept(self, audio: np.ndarray) -> None:
        self._audio.append(audio)

    def advance(self, should_yield: YieldCheck) -> Decoded | None:
        model = self._rec.model
        audio = self._audio.read()
        encoded = model.encode(audio)
        prior = self._pilot.ids if self._pilot is not None else ()
        decoded = greedy_decode(
            model, encoded, pilot=prior, stop=lambda _: should_yield(), hotwords=self._hotwords
        )
        if not decoded.finished and should_yield():
            return None  # gave way to a final; a half pilot is not worth publishing
        self._pilot = dataclasses.replace(decoded, samples=len(audio))
        return self._pilot

    def finalize(self, end: int | None = None, stop: StopCheck | None = None) -> Decoded:
        model = self._rec.model
        audio = self._audio.read(end)
        pilot = self._pilot.ids if self._pilot is not None else ()
        tokens: list[TokenInfo] = []
        stopped = False
        finished = True
        reused = calls = 0
        p_end: float | None = None
        encoded: Encoded | None = None
        pieces = split_long(audio, self._rec.max_chunk_s)
        for i, (a, b) in enumerate(pieces):
            encoded = model.encode(audio[a:b])
            done = list(tokens)

            def piece_stop(new: Sequence[TokenInfo], done: list[TokenInfo] = done) -> bool:
                return stop is not None and stop([*done, *new])

            decoded = greedy_decode(
                model, encoded, pilot=pilot if i == 0 else (), stop=piece_stop, hotwords=self._hotwords
            )
            tokens.extend(decoded.tokens)
            reused += decoded.reused_tokens
            calls += decoded.decoder_calls
            finished = finished and decoded.finished
            p_end = decoded.p_end  # the text ends in the last piece
            if stop is not None and not decoded.finished and stop(tokens):
                stopped = True
                break
        self._final_encoded = encoded if len(pieces) == 1 else None
        text = model.detokenize([t.id for t in tokens])
        return Decoded(
            tuple(tokens), text, finished, calls, reused, samples=len(audio), stopped=stopped, p_end=p_end
        )

    def n_best(self, n: int) -> list[Hypothesis]:
        if self._final_encoded is None:
            return []
        return beam_nbest(self._rec.model, self._final_encoded, beam=n, n_best=n, hotwords=self._hotwords)


def prebuilt_graphs(directory: Path) -> ModelFiles | None:
    """``encoder.onnx`` and ``decoder.onnx`` in ``directory`` if both are there (None: the shipped
    ``.ort`` layout, rebuilt on first use)."""
    files = ModelFiles(encoder=directory / "encoder.onnx", decoder=directory / "decoder.onnx")
    return files if files.encoder.is_file() and files.decoder.is_file() else None


def load_moonshine(
    model_dir: Path | None,
    cache_dir: Path,
    threads: int,
    max_chunk_s: float,
    hotword_bonus: float | None = None,
) -> MoonshineRecognizer:
    """Moonshine base with graphs rebuilt for onnxruntime's optimizer (cached after the first start), or
    the ONNX graphs in ``model_dir`` (``edge-agent quantize`` writes such a directory); ``hotword_bonus``
    None is the tuned ``HOTWORD_BONUS``."""
    source = model_dir if model_dir is not None else default_model_dir()
    files = prebuilt_graphs(source) or ensure_onnx_models(source, cache_dir)
    model = MoonshineModel(
        MoonshineFiles(files.encoder, files.decoder, source / "tokenizer.bin"), threads=threads
    )
    bonus = HOTWORD_BONUS if hotword_bonus is None else hotword_bonus
    return MoonshineRecognizer(model, max_chunk_s, bonus)
