"""One client's audio stream: VAD, utterances, pilot inference, finals, escalation. No network code.

``feed()`` takes client audio; events (dicts, see ``edge_agent.events``) go to ``self.events``.
Model work goes through the shared ``InferenceWorker``; the cloud through the shared escalator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from edge_agent import events
from edge_agent.asr.backend import Encoded
from edge_agent.asr.decoding import Decoded, Hypothesis, TokenInfo, beam_nbest, greedy_decode, words_of
from edge_agent.audio.convert import StreamResampler, check_rate, pcm_to_float
from edge_agent.audio.endpoint import (
    EndpointConfig,
    Endpointer,
    SilenceBegan,
    SpeechEnd,
    SpeechResumed,
    SpeechStart,
)
from edge_agent.audio.ring import RingBuffer
from edge_agent.audio.segmenter import split_long
from edge_agent.confidence import cloud_features
from edge_agent.offramp import Reason, choose
from protos import speech_pb2

if TYPE_CHECKING:
    from edge_agent.escalation.client import CloudResult, CloudStream
    from edge_agent.recognizer import Recognizer

log = logging.getLogger(__name__)
RATE = 16000
_KEPT_RESULTS = 1000


@dataclass(frozen=True)
class DecodeOutcome:
    decoded: Decoded
    start: int
    end: int
    stopped: bool
    """The offramp stopped the decode (hopeless on the edge)."""
    seconds: float
    encoded: Encoded | None = None
    """Encoder output, kept for an n-best search if the utterance escalates (single-piece audio)."""
    audio: np.ndarray | None = None
    """The utterance's 16 kHz audio, read when it ended (the ring may have moved on by escalation time)."""


@dataclass
class Utterance:
    id: str
    start: int
    index: int
    pilot: Decoded | None = None
    pilot_end: int = 0
    pilot_agreement: float = 1.0
    pilots: int = 0
    silence_at: int | None = None
    speculative: asyncio.Future[DecodeOutcome] | None = None
    speculative_end: int = -1
    early: CloudStream | None = None
    early_sent: int = 0
    early_p: float | None = None
    started_at: float = field(default_factory=time.monotonic)


class Session:
    def __init__(
        self, rec: Recognizer, sample_rate: int, encoding: str, session_id: str | None = None
    ) -> None:
        self.rec = rec
        self.id = session_id or uuid.uuid4().hex[:12]
        self.sample_rate = check_rate(sample_rate)
        pcm_to_float(b"", encoding)  # validates the encoding name now, not on the first frame
        self.encoding = encoding
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        s = rec.settings
        self._resampler = StreamResampler(self.sample_rate, RATE)
        self._vad = rec.vad.create_stream()
        self._endpointer = Endpointer(
            EndpointConfig(
                threshold=s.vad_threshold,
                min_silence_ms=s.min_silence_ms,
                min_speech_ms=s.min_speech_ms,
                max_utterance_s=s.max_utterance_s,
                pre_roll_ms=s.pre_roll_ms,
            )
        )
        self._pad = self._endpointer.config.end_pad_samples
        capacity = int((s.max_utterance_s + s.pre_roll_ms / 1000 + 10) * RATE)
        self._ring = RingBuffer(capacity)
        # VAD decision per window (absolute window index -> is speech) for the speech ratio feature.
        self._speech_windows: deque[tuple[int, bool]] = deque(maxlen=capacity // 512 + 1)
        self._window = 0
        # (absolute sample, wall-clock arrival) marks, to measure latency from the audio timeline.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)
        self._utt: Utterance | None = None
        self._count = 0
        self._finals: list[asyncio.Task[None]] = []
        self._pilot_pending = False
        self._last_final: asyncio.Task[None] | None = None
        self._edge_results: dict[str, tuple[str, float, float]] = {}
        self.closed = False

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take one frame of client audio. Raises AudioFormatError for malformed frames."""
        samples = pcm_to_float(data, self.encoding)
        self._ingest(self._resampler.process(samples))

    def _ingest(self, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        self._ring.write(audio)
        self._arrivals.append((self._ring.total_written, time.monotonic()))
        threshold = self.rec.settings.vad_threshold
        for prob in self._vad.accept(audio):
            self._speech_windows.append((self._window, prob >= threshold))
            self._window += 1
            for event in self._endpointer.push(prob):
                self._on_endpoint(event)
        self._after_audio()

    async def finish(self) -> int:
        """End of the client's audio: close the open utterance and wait for every final."""
        self._ingest(self._resampler.flush())
        # An utterance still open at the end of the audio ends here (reason "stream_end").
        for event in self._endpointer.flush():
            self._on_endpoint(event)
        if self._finals:
            await asyncio.gather(*self._finals, return_exceptions=True)
        return self._count

    async def close(self) -> None:
        self.closed = True
        for task in self._finals:
            task.cancel()
        utt = self._utt
        if utt is not None and utt.early is not None:
            utt.early.cancel()

    # -- endpointing ---------------------------------------------------------------------

    def _on_endpoint(self, event: object) -> None:
        if isinstance(event, SpeechStart):
            self._count += 1
            self._utt = Utterance(f"{self.id}-{self._count}", event.start_sample, self._count)
            self.rec.metrics.utterances.inc()
        elif isinstance(event, SilenceBegan) and self._utt is not None:
            self._utt.silence_at = event.at_sample
        elif isinstance(event, SpeechResumed) and self._utt is not None:
            self._utt.silence_at = None
            if self._utt.speculative is not None:
                self._utt.speculative.cancel()  # the speaker went on: that decode is stale
                self._utt.speculative = None
        elif isinstance(event, SpeechEnd) and self._utt is not None:
            utt, self._utt = self._utt, None
            self._finalize(utt, event.end_sample, event.reason)

    def _after_audio(self) -> None:
        utt = self._utt
        if utt is None:
            return
        now = self._ring.total_written
        if utt.early is not None and now > utt.early_sent:
            self._send_early(utt, now)
        # Speculative final: as soon as the padded end of a pause is in, decode what the final will be.
        if utt.silence_at is not None and utt.speculative is None and self.rec.settings.speculative:
            end = utt.silence_at + self._pad
            if now >= end:
                utt.speculative_end = end
                utt.speculative = asyncio.ensure_future(self._run_final(utt, end))
            return
        s = self.rec.settings
        if not s.pilot or self._pilot_pending or utt.silence_at is not None:
            return
        speech = now - utt.start
        if speech >= s.pilot_min_audio_ms * 16 and now - utt.pilot_end >= s.pilot_min_new_audio_ms * 16:
            self._pilot_pending = True
            future = self.rec.worker.offer_pilot(self.id, lambda: self._pilot_job(utt))
            future.add_done_callback(lambda f: self._on_pilot(utt, f))

    # -- pilot inference -----------------------------------------------------------------

    def _pilot_job(self, utt: Utterance) -> tuple[Decoded, int] | None:
        """Runs on the inference thread: decode the utterance so far, verifying the previous pilot."""
        if self._utt is not utt or self.closed:
            return None
        # Safe against the event loop's writes: the ring publishes total_written after copying, and
        # its capacity (max utterance + 10 s) keeps the utterance from being overwritten meanwhile.
        end = self._ring.total_written
        audio = self._ring.read_range(utt.start, end)
        model = self.rec.model
        encoded = model.encode(audio)
        prior = utt.pilot.ids if utt.pilot is not None else ()
        decoded = greedy_decode(model, encoded, pilot=prior, stop=lambda _: self.rec.worker.final_waiting)
        if not decoded.finished and self.rec.worker.final_waiting:
            self.rec.worker.pilots_preempted += 1
            return None  # gave way to a final; a half pilot is not worth publishing
        return decoded, end

    def _on_pilot(self, utt: Utterance, future: asyncio.Future[tuple[Decoded, int] | None]) -> None:
        self._pilot_pending = False
        if future.cancelled() or self.closed:
            return
        if future.exception() is not None:
            log.error("pilot failed for %s", utt.id, exc_info=future.exception())
            return
        result = future.result()
        if result is None:
            return
        decoded, end = result
        previous = utt.pilot
        utt.pilot_agreement = decoded.reused_tokens / len(previous.ids) if previous and previous.ids else 1.0
        utt.pilot, utt.pilot_end = decoded, end
        utt.pilots += 1
        self.rec.metrics.pilot_runs.inc()
        if decoded.text:
            self._emit(events.partial(utt.id, decoded.text, utt.start / RATE, end / RATE))
        offramps = self.rec.settings.offramps and not self.rec.settings.always_cloud
        if offramps and utt.early is None and self.rec.escalator is not None and self._utt is utt:
            decision = self.rec.policy.at_pilot(
                decoded.tokens,
                (end - utt.start) / RATE,
                self._speech_ratio(utt.start, end),
                utt.pilot_agreement,
            )
            if decision.escalate:
                utt.early_p = decision.p_wrong
                context = self._context(utt.id, decoded, decision.p_wrong, Reason.EARLY_PILOT, final=False)
                utt.early = self.rec.escalator.open_early(self.id, context)
                if utt.early is not None:
                    self.rec.metrics.escalations.labels(Reason.EARLY_PILOT.value).inc()
                    self._send_early(utt, self._ring.total_written)
        self._after_audio()

    def _send_early(self, utt: Utterance, now: int) -> None:
        assert utt.early is not None
        start = max(utt.start, utt.early_sent)
        chunk = self._ring.read_range(start, now)
        utt.early.send_audio(_pcm16(chunk))
        utt.early_sent = now

    # -- finals --------------------------------------------------------------------------

    async def _run_final(self, utt: Utterance, end: int) -> DecodeOutcome:
        start = utt.start
        audio = self._ring.read_range(start, end)
        pilot = utt.pilot.ids if utt.pilot is not None else ()
        speech_ratio = self._speech_ratio(start, end)
        outcome = await self.rec.worker.run_final(
            lambda: self._final_job(audio, start, end, pilot, speech_ratio)
        )
        return dataclasses.replace(outcome, audio=audio)

    def _final_job(
        self, audio: np.ndarray, start: int, end: int, pilot: tuple[int, ...], speech_ratio: float
    ) -> DecodeOutcome:
        """Runs on the inference thread."""
        began = time.perf_counter()
        model, policy = self.rec.model, self.rec.policy
        settings = self.rec.settings
        offramps = settings.offramps and not settings.always_cloud
        seconds = len(audio) / RATE
        tokens: list[TokenInfo] = []
        stopped = False
        finished = True
        reused = calls = 0
        pieces = split_long(audio, self.rec.settings.max_chunk_s)
        for i, (a, b) in enumerate(pieces):
            encoded = model.encode(audio[a:b])
            done = list(tokens)

            def stop(new: Sequence[TokenInfo], done: list[TokenInfo] = done) -> bool:
                return offramps and policy.should_stop([*done, *new], seconds, speech_ratio)

            decoded = greedy_decode(model, encoded, pilot=pilot if i == 0 else (), stop=stop)
            tokens.extend(decoded.tokens)
            reused += decoded.reused_tokens
            calls += decoded.decoder_calls
            finished = finished and decoded.finished
            if offramps and not decoded.finished and policy.should_stop(tokens, seconds, speech_ratio):
                stopped = True
                break
        text = model.detokenize([t.id for t in tokens])
        result = Decoded(tuple(tokens), text, finished, calls, reused)
        kept = encoded if len(pieces) == 1 else None
        return DecodeOutcome(result, start, end, stopped, time.perf_counter() - began, kept)

    def _finalize(self, utt: Utterance, end: int, reason: str) -> None:
        if utt.speculative is not None and utt.speculative_end == end:
            decode: asyncio.Future[DecodeOutcome] = utt.speculative
        else:
            if utt.speculative is not None:
                utt.speculative.cancel()
            decode = asyncio.ensure_future(self._run_final(utt, end))
        previous = self._last_final
        task = asyncio.ensure_future(self._complete(utt, decode, end, reason, previous))
        self._last_final = task
        self._finals = [t for t in self._finals if not t.done()] + [task]

    async def _complete(
        self,
        utt: Utterance,
        decode: asyncio.Future[DecodeOutcome],
        end: int,
        end_reason: str,
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            await self._complete_utterance(utt, decode, end, end_reason, previous)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never drop an utterance silently: the client hears about it.
            log.exception("finalizing %s failed", utt.id, extra={"utterance_id": utt.id})
            self._emit(events.error("final_failed", f"could not finalize utterance {utt.id}"))

    async def _complete_utterance(
        self,
        utt: Utterance,
        decode: asyncio.Future[DecodeOutcome],
        end: int,
        end_reason: str,
        previous: asyncio.Task[None] | None,
    ) -> None:
        endpoint_at = time.monotonic()
        speech_end_at = self._arrival_of(end)
        try:
            outcome = await decode
        except Exception:
            log.exception("final decode failed for %s", utt.id)
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            self._emit(events.error("decode_failed", f"could not decode utterance {utt.id}"))
            return
        d = outcome.decoded
        duration = (end - utt.start) / RATE
        speech_ratio = self._speech_ratio(utt.start, end)
        agreement = d.reused_tokens / len(utt.pilot.ids) if utt.pilot is not None and utt.pilot.ids else 1.0
        policy = self.rec.policy
        decision = policy.at_final(d.tokens, duration, speech_ratio, agreement, d.finished)
        reason: Reason | None = decision.reason
        if utt.early is not None:
            reason = Reason.EARLY_PILOT
        elif outcome.stopped:
            reason = Reason.DECODE_STOPPED
        always = self.rec.settings.always_cloud
        if always:
            reason = Reason.FORCED
        escalate = self.rec.escalator is not None and (
            always or decision.escalate or outcome.stopped or utt.early is not None
        )
        # A decode the offramp stopped holds only the start of the utterance: never prefer it.
        p_edge = 1.0 if outcome.stopped else decision.p_wrong
        cloud: CloudResult | None = None
        cloud_p: float | None = None
        pending = False
        if escalate and self.rec.escalator is not None:
            assert reason is not None
            if utt.early is None:
                self.rec.metrics.escalations.labels(reason.value).inc()
            alternatives: list[Hypothesis] = []
            if self.rec.settings.edge_n_best > 1 and outcome.encoded is not None:
                encoded, n = outcome.encoded, self.rec.settings.edge_n_best
                alternatives = await self.rec.worker.run_final(
                    lambda: beam_nbest(self.rec.model, encoded, beam=n, n_best=n)
                )
            context = self._context(utt.id, d, p_edge, reason, final=True, alternatives=alternatives)
            deadline = max(0.05, self.rec.settings.cloud_deadline_s - (time.monotonic() - endpoint_at))
            assert outcome.audio is not None
            pcm = _pcm16(outcome.audio)
            if utt.early is not None:
                cloud = await self.rec.escalator.finish_early(utt.early, self.id, context, pcm, deadline)
            else:
                cloud = await self.rec.escalator.recognize(self.id, context, pcm, deadline)
            pending = cloud is None
            if cloud is not None and cloud.hypotheses:
                cloud_p = self._cloud_p_wrong(cloud, d.text, duration)
        source = "cloud" if always and cloud_p is not None else choose(p_edge, cloud_p)
        self.rec.metrics.audio_seconds.inc(duration)
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # finals go out in order
        if self.closed:
            return
        self._edge_results[utt.id] = (d.text, p_edge, duration)
        if len(self._edge_results) > _KEPT_RESULTS:  # kept only to score late corrections
            self._edge_results.pop(next(iter(self._edge_results)))
        start_s, end_s = utt.start / RATE, end / RATE
        if source == "cloud" and cloud is not None:
            best = cloud.hypotheses[0]
            text = best.text
            confidence = 1.0 - (cloud_p if cloud_p is not None else 0.5)
            words = [
                {
                    "word": w.word,
                    "start": round(start_s + w.start, 3),
                    "end": round(start_s + w.end, 3),
                    "confidence": round(w.probability, 4),
                }
                for w in best.words
            ]
            timing = "aligned"
        else:
            text = d.text
            confidence = 1.0 - p_edge
            words = events.words_with_times(words_of(self.rec.model, d.tokens), start_s, end_s)
            timing = "estimated"
        latency = time.monotonic() - speech_end_at
        self.rec.metrics.final_latency.observe(latency)
        log.info(
            "final utterance=%s source=%s escalated=%s reason=%s latency=%.0fms",
            utt.id, source, escalate, reason.value if escalate and reason else "-", 1000 * latency,
            extra={"utterance_id": utt.id, "session_id": self.id, "source": source, "escalated": escalate,
                   "latency_ms": round(1000 * latency, 1), "cloud_pending": pending},
        )  # fmt: skip
        self._emit(
            {
                "type": "final",
                "utterance_id": utt.id,
                "text": text,
                "confidence": round(confidence, 4),
                "source": source,
                "escalated": escalate,
                "reason": reason.value if escalate and reason is not None else None,
                "edge_confidence": round(1.0 - p_edge, 4),
                "cloud_confidence": round(1.0 - cloud_p, 4) if cloud_p is not None else None,
                "edge_text": d.text,
                "cloud_text": cloud.hypotheses[0].text if cloud is not None and cloud.hypotheses else None,
                "cloud_pending": pending,
                "words": words,
                "word_timing": timing,
                "start": round(start_s, 3),
                "end": round(end_s, 3),
                "end_reason": end_reason,
                "latency_ms": round(1000 * latency, 1),
                "finalize_ms": round(1000 * (time.monotonic() - endpoint_at), 1),
                "pilots": utt.pilots,
                "reused_tokens": d.reused_tokens,
            }
        )

    def on_correction(self, utterance_id: str, cloud: CloudResult) -> None:
        """A queued escalation answered after its final went out: tell the client."""
        if self.closed or not cloud.hypotheses:
            return
        edge_text, p_edge, duration = self._edge_results.get(utterance_id, ("", 1.0, 1.0))
        cloud_p = self._cloud_p_wrong(cloud, edge_text, duration)
        source = choose(p_edge, cloud_p)
        best = cloud.hypotheses[0]
        self._emit(
            {
                "type": "correction",
                "utterance_id": utterance_id,
                "text": best.text if source == "cloud" else edge_text,
                "source": source,
                "confidence": round(1.0 - min(cloud_p, p_edge), 4),
                "edge_confidence": round(1.0 - p_edge, 4),
                "cloud_confidence": round(1.0 - cloud_p, 4),
                "cloud_text": best.text,
            }
        )

    # -- helpers -------------------------------------------------------------------------

    def _cloud_p_wrong(self, cloud: CloudResult, edge_text: str, duration: float) -> float:
        best = cloud.hypotheses[0]
        agreement = 1.0 - min(1.0, _word_error_rate(edge_text, best.text))
        feats = cloud_features(best.avg_logprob, best.no_speech_prob, best.text, duration, agreement)
        return self.rec.calibration.cloud.probability(feats)

    def _context(
        self,
        utterance_id: str,
        decoded: Decoded,
        p_wrong: float,
        reason: Reason,
        final: bool,
        alternatives: Sequence[Hypothesis] = (),
    ) -> speech_pb2.EdgeContext:
        logprob = float(sum(t.logprob for t in decoded.tokens))
        n_best = [speech_pb2.EdgeHypothesis(text=decoded.text, confidence=1.0 - p_wrong, log_prob=logprob)]
        # Beam alternatives carry their log-prob; only the greedy best has a calibrated confidence.
        n_best += [
            speech_pb2.EdgeHypothesis(text=h.text, log_prob=h.logprob)
            for h in alternatives
            if h.text != decoded.text
        ]
        return speech_pb2.EdgeContext(
            utterance_id=utterance_id,
            n_best=n_best,
            confidence=1.0 - p_wrong,
            reason=_REASONS[reason],
            reason_detail=reason.value,
            edge_model=self.rec.model.name,
            is_final=final,
        )

    def _speech_ratio(self, start: int, end: int) -> float:
        first, last = start // 512, max(start // 512 + 1, end // 512)
        flags = [speech for index, speech in self._speech_windows if first <= index < last]
        return sum(flags) / len(flags) if flags else 0.0

    def _arrival_of(self, sample: int) -> float:
        for position, at in self._arrivals:
            if position >= sample:
                return at
        return time.monotonic()

    def _emit(self, event: dict[str, Any]) -> None:
        if not self.closed:
            self.events.put_nowait(event)


_REASONS = {
    Reason.LOW_CONFIDENCE: speech_pb2.LOW_CONFIDENCE,
    Reason.EARLY_PILOT: speech_pb2.EARLY_PILOT,
    Reason.DECODE_STOPPED: speech_pb2.LOW_CONFIDENCE,
    Reason.LONG_UTTERANCE: speech_pb2.LONG_UTTERANCE,
    Reason.FORCED: speech_pb2.FORCED,
}


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _word_error_rate(reference: str, hypothesis: str) -> float:
    """Word edit distance over the reference length, on casefolded words without punctuation."""
    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(Levenshtein.distance(ref, hyp)) / len(ref)


def _words(text: str) -> list[str]:
    return ["".join(c for c in w.casefold() if c.isalnum() or c == "'") for w in text.split()]
