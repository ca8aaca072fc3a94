"""One client's audio stream: VAD, utterances, pilot inference, finals, escalation. No network code.

``feed()`` takes client audio; events (dicts, see ``edge_agent.events``) go to ``self.events``. Each
utterance gets a stream of the shared edge model (``edge_agent.asr.interface``), fed every sample once,
in order; the session decides *when* to advance it (pilots) and finalize it, asking the model's
capabilities, never its type. Model work goes through the shared ``InferenceWorker``; the cloud
through the shared escalator.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent import events
from edge_agent.asr.hotwords import merge_hotwords
from edge_agent.asr.interface import AsrStream, Decoded, Hypothesis, StopCheck, TokenInfo
from edge_agent.audio.adaptive_endpoint import AdaptiveEndpointConfig, EndpointEvidence, decide
from edge_agent.audio.convert import StreamResampler, check_rate, float_to_pcm16, pcm_to_float
from edge_agent.audio.endpoint import (
    EndpointConfig,
    Endpointer,
    SilenceBegan,
    SpeechEnd,
    SpeechResumed,
    SpeechStart,
)
from edge_agent.audio.ring import RingBuffer
from edge_agent.confidence import cloud_beats_edge, cloud_p_wrong, pilot_agreement
from edge_agent.escalation.client import CloudUnavailable
from edge_agent.escalation.context import edge_context
from edge_agent.language import ENGLISH, is_english
from edge_agent.offramp import ENGLISH_ONLY, EscalationPlan, LanguageState, Reason, choose, plan_escalation

if TYPE_CHECKING:
    from asr_common.protos import speech_pb2
    from edge_agent.escalation.client import CloudResult, CloudStream
    from edge_agent.recognizer import Recognizer

log = logging.getLogger(__name__)
RATE = 16000
_KEPT_RESULTS = 1000


@dataclass(frozen=True)
class FinalOutcome:
    decoded: Decoded
    audio: np.ndarray
    """The utterance's 16 kHz audio, read when it ended (the ring may have moved on by escalation time)."""


@dataclass
class Utterance:
    id: str
    start: int
    index: int
    stream: AsrStream
    fed: int
    """Absolute sample up to which the stream has been fed."""
    pilot: Decoded | None = None
    pilot_end: int = 0
    pilot_agreement: float = 1.0
    pilots: int = 0
    silence_at: int | None = None
    speculative: asyncio.Future[FinalOutcome] | None = None
    speculative_end: int = -1
    speculative_at: float = 0.0
    """When the speculative final was asked for (monotonic clock; its decode time goes to the debug log)."""
    early: CloudStream | None = None
    early_sent: int = 0
    early_p: float | None = None
    early_language: bool = False
    """The early stream asks the cloud to detect the language (a pilot was judged not English)."""
    pause_vad: list[float] = field(default_factory=list)
    """VAD probabilities since the current pause began (adaptive endpointing)."""
    endpoint: str | None = None
    """Adaptive endpointing's verdict on the current pause."""
    cloud_ahead: asyncio.Task[CloudResult] | None = None
    """A speculative escalation: the cloud asked at the speculative final, for ``speculative_end``."""
    started_at: float = field(default_factory=time.monotonic)
    dropped: bool = False
    """Cleared by the client: nothing more is said about it."""


class Session:
    def __init__(
        self,
        rec: Recognizer,
        sample_rate: int,
        encoding: str,
        session_id: str | None = None,
        *,
        turn_detection: bool = True,
        vad_events: bool = False,
        min_silence_ms: int | None = None,
        hotwords: Sequence[str] = (),
    ) -> None:
        """``turn_detection=False``: silence never ends an utterance, only :meth:`commit` (or the length
        cap) does. ``vad_events``: also emit ``speech_started`` / ``speech_stopped`` events.
        ``min_silence_ms``: this session's end-of-utterance silence instead of the setting's.
        ``hotwords``: phrases to favour (validated by the caller), before ``EDGE_HOTWORDS``; the edge
        decodes with them and escalations carry them to the cloud."""
        self.rec = rec
        self.hotwords = merge_hotwords(hotwords, rec.settings.hotwords)
        self.id = session_id or uuid.uuid4().hex[:12]
        self.sample_rate = check_rate(sample_rate)
        pcm_to_float(b"", encoding)  # validates the encoding name now, not on the first frame
        self.encoding = encoding
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        s = rec.settings
        silence_ms = min_silence_ms if min_silence_ms is not None else s.min_silence_ms
        self._resampler = StreamResampler(self.sample_rate, RATE)
        self._vad = rec.vad.create_stream()
        self._endpointer = Endpointer(
            EndpointConfig(
                threshold=s.vad_threshold,
                # Without turn detection a pause never ends the utterance: the length cap does first.
                min_silence_ms=silence_ms if turn_detection else int(1000 * s.max_utterance_s) + 1000,
                min_speech_ms=s.min_speech_ms,
                max_utterance_s=s.max_utterance_s,
                pre_roll_ms=s.pre_roll_ms,
                end_pad_ms=s.end_pad_ms,
            )
        )
        self._pad = self._endpointer.config.end_pad_samples
        self._adaptive: AdaptiveEndpointConfig | None = None
        self._vad_events = vad_events
        if s.adaptive_endpoint and s.speculative and turn_detection:
            base = silence_ms
            self._adaptive = AdaptiveEndpointConfig(
                base_ms=base,
                fast_ms=min(s.endpoint_fast_ms, base),
                slow_ms=max(s.endpoint_slow_ms, base),
                quiet_vad=s.endpoint_quiet_vad,
                end_confidence=s.endpoint_end_confidence,
            )
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
        self._edge_results: dict[str, tuple[str, float | None, float, dict[str, float] | None]] = {}
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
        if self._utt is not None:
            self._feed(self._utt)  # before the VAD's events, so a final sees all audio up to its end
        threshold = self.rec.settings.vad_threshold
        for prob in self._vad.accept(audio):
            self._speech_windows.append((self._window, prob >= threshold))
            self._window += 1
            for event in self._endpointer.push(prob):
                self._on_endpoint(event)
            if self._utt is not None and self._utt.silence_at is not None:
                self._utt.pause_vad.append(prob)
        self._after_audio()

    def _feed(self, utt: Utterance) -> None:
        now = self._ring.total_written
        if now > utt.fed:
            utt.stream.accept(self._ring.read_range(utt.fed, now))
            utt.fed = now

    async def finish(self) -> int:
        """End of the client's audio: close the open utterance and wait for every final."""
        self._ingest(self._resampler.flush())
        # An utterance still open at the end of the audio ends here (reason "stream_end").
        for event in self._endpointer.flush():
            self._on_endpoint(event)
        if self._finals:
            await asyncio.gather(*self._finals, return_exceptions=True)
        return self._count

    def commit(self) -> str | None:
        """End the open utterance here (reason ``"commit"``), as a client's commit asks; its final follows
        as usual. Returns its id, or None when no speech is open (nothing to commit)."""
        utt = self._utt
        for event in self._endpointer.flush("commit"):
            self._on_endpoint(event)
        return utt.id if utt is not None else None

    def clear(self) -> str | None:
        """Drop the open utterance without a final, as a client's clear asks. Returns its id, if any."""
        utt, self._utt = self._utt, None
        self._endpointer.flush()
        if utt is None:
            return None
        utt.dropped = True
        for pending in (utt.speculative, utt.cloud_ahead):
            if pending is not None:
                pending.cancel()
        if utt.early is not None:
            utt.early.cancel()
        return utt.id

    async def close(self) -> None:
        self.closed = True
        for task in self._finals:
            task.cancel()
        utt = self._utt
        if utt is not None and utt.early is not None:
            utt.early.cancel()
        if utt is not None and utt.cloud_ahead is not None:
            utt.cloud_ahead.cancel()

    # -- endpointing ---------------------------------------------------------------------

    def _on_endpoint(self, event: object) -> None:
        if isinstance(event, SpeechStart):
            self._count += 1
            stream = self.rec.model.create_stream(hotwords=self.hotwords)
            self._utt = Utterance(
                f"{self.id}-{self._count}", event.start_sample, self._count, stream, event.start_sample
            )
            self._feed(self._utt)  # the pre-roll and the speech so far
            self.rec.metrics.utterances.inc()
            if self._vad_events:
                self._emit(events.speech_started(self._utt.id, event.start_sample / RATE))
        elif isinstance(event, SilenceBegan) and self._utt is not None:
            self._utt.silence_at = event.at_sample
        elif isinstance(event, SpeechResumed) and self._utt is not None:
            self._utt.silence_at = None
            self._utt.pause_vad.clear()
            self._utt.endpoint = None
            if self._utt.cloud_ahead is not None:
                self._utt.cloud_ahead.cancel()  # asked about audio the speaker has since added to
                self._utt.cloud_ahead = None
            if self._utt.speculative is not None:
                self._utt.speculative.cancel()  # the speaker went on: that decode is stale
                self._utt.speculative = None
        elif isinstance(event, SpeechEnd) and self._utt is not None:
            utt, self._utt = self._utt, None
            if self._vad_events:
                self._emit(events.speech_stopped(utt.id, event.end_sample / RATE, event.reason))
            self._finalize(utt, event.end_sample, event.reason)

    def _after_audio(self) -> None:
        utt = self._utt
        if utt is None:
            return
        now = self._ring.total_written
        if utt.early is not None and now > utt.early_sent:
            self._send_early(utt, now)
        caps = self.rec.model.capabilities
        if utt.silence_at is not None:
            # Speculative final: as soon as the padded end of a pause is in, decode what the final will be.
            end = utt.silence_at + self._pad
            if utt.speculative is None and self.rec.settings.speculative and now >= end:
                utt.speculative_end, utt.speculative_at = end, time.monotonic()
                utt.speculative = asyncio.ensure_future(self._run_final(utt, end))
                utt.speculative.add_done_callback(lambda f: self._on_speculative(utt, f))
            if not caps.native_streaming:
                return  # a re-decoding pilot in a pause would only repeat the speculative final
        if self._pilot_due(utt, now):
            self._pilot_pending = True
            future = self.rec.worker.offer_pilot(self.id, lambda: self._pilot_job(utt))
            future.add_done_callback(lambda f: self._on_pilot(utt, f))

    def _on_speculative(self, utt: Utterance, future: asyncio.Future[FinalOutcome]) -> None:
        """The speculative final is in: ask the cloud now if the final will escalate, and let adaptive
        endpointing decide how long this pause must last."""
        if self.closed or self._utt is not utt or utt.speculative is not future:
            return  # the speaker went on (the decode is stale) or the utterance already ended
        if future.cancelled() or future.exception() is not None:
            return  # the fixed silence ends it; _finalize reports a failed decode
        self._escalate_ahead(utt, future.result(), utt.speculative_end)
        if self._adaptive is None:
            return
        d = future.result().decoded
        evidence = EndpointEvidence(
            text=d.text,
            finished=d.finished,
            p_end=d.p_end,
            pilot_text=utt.pilot.text if utt.pilot is not None else None,
            punctuates=self.rec.model.capabilities.punctuation,
            pause_vad=tuple(utt.pause_vad),
        )
        decision = decide(evidence, self._adaptive)
        utt.endpoint = decision.verdict
        log.debug(
            "endpoint %s: %s, %d ms (%s); speculative final %.0f ms, pause %.0f ms (began at %.3f s), "
            "p_end %s, text %r",
            utt.id,
            decision.verdict,
            decision.silence_ms,
            decision.why,
            1000 * (time.monotonic() - utt.speculative_at),
            1000 * (self._ring.total_written - (utt.silence_at or 0)) / RATE,
            (utt.silence_at or 0) / RATE,
            f"{d.p_end:.2f}" if d.p_end is not None else None,
            d.text,
        )
        for event in self._endpointer.set_pause_silence(decision.silence_ms):
            self._on_endpoint(event)

    def _plan(self, utt: Utterance, d: Decoded, end: int) -> EscalationPlan:
        """Escalate or not, from a final decode of the utterance up to ``end``."""
        s = self.rec.settings
        duration = (end - utt.start) / RATE
        speech_ratio, agreement = self._speech_ratio(utt.start, end), self._agreement(d, utt.pilot)
        offload = self.rec.offload
        threshold = offload.threshold() if offload is not None else None
        decision = self.rec.policy.at_final(
            d.tokens, duration, speech_ratio, agreement, d.finished, threshold
        )
        language = ENGLISH_ONLY
        if self.rec.language is not None:
            verdict = self.rec.language.at_final(d.tokens, duration, speech_ratio, agreement, d.finished)
            early = utt.early is not None and utt.early_language
            language = LanguageState(verdict.other, early, s.other_languages_to_cloud)
        return plan_escalation(
            decision,
            d.stopped,
            utt.early is not None,
            s.always_cloud,
            self.rec.escalator is not None,
            language,
        )

    def _escalate_ahead(self, utt: Utterance, outcome: FinalOutcome, end: int) -> None:
        """Speculative escalation: when the speculative final will escalate, its cloud request starts now,
        while the endpoint still waits for silence, and is dropped if the speaker goes on. An utterance
        already streaming to the cloud (early escalation) has its own head start."""
        escalator = self.rec.escalator
        if not self.rec.settings.speculative_escalation or escalator is None or utt.early is not None:
            return
        plan = self._plan(utt, outcome.decoded, end)
        if not plan.escalate or plan.reason is None:
            return
        duration = (end - utt.start) / RATE
        reason = plan.reason

        async def ask() -> CloudResult:
            context, pcm = await self._cloud_request(
                utt, outcome, plan.p_edge, reason, duration, plan.detect_language
            )
            return await escalator.try_recognize(context, pcm, self.rec.settings.cloud_deadline_s)

        utt.cloud_ahead = asyncio.ensure_future(ask())

    def _pilot_due(self, utt: Utterance, now: int) -> bool:
        s = self.rec.settings
        if not s.pilot or self._pilot_pending:
            return False
        caps = self.rec.model.capabilities
        if caps.native_streaming:
            return now - utt.pilot_end >= max(1, caps.chunk_samples)
        speech = now - utt.start
        return speech >= s.pilot_min_audio_ms * 16 and now - utt.pilot_end >= s.pilot_min_new_audio_ms * 16

    # -- pilot inference -----------------------------------------------------------------

    def _pilot_job(self, utt: Utterance) -> Decoded | None:
        """Runs on the inference thread: bring the utterance's hypothesis up to the audio so far."""
        if self._utt is not utt or self.closed:
            return None
        worker = self.rec.worker
        decoded = utt.stream.advance(lambda: worker.final_waiting)
        if decoded is None and worker.final_waiting:
            worker.pilots_preempted += 1
        return decoded

    def _on_pilot(self, utt: Utterance, future: asyncio.Future[Decoded | None]) -> None:
        self._pilot_pending = False
        if future.cancelled() or self.closed or utt.dropped:
            return
        if future.exception() is not None:
            log.error("pilot failed for %s", utt.id, exc_info=future.exception())
            return
        decoded = future.result()
        if decoded is None:
            return
        end = utt.start + decoded.samples
        utt.pilot_agreement = self._agreement(decoded, utt.pilot)
        # A streaming model advances through pauses too; an unchanged hypothesis is no news to the client.
        changed = utt.pilot is None or decoded.text != utt.pilot.text
        utt.pilot, utt.pilot_end = decoded, end
        utt.pilots += 1
        self.rec.metrics.pilot_runs.inc()
        if decoded.text and changed:
            self._emit(events.partial(utt.id, decoded.text, utt.start / RATE, end / RATE))
        offramps = self.rec.settings.offramps and not self.rec.settings.always_cloud
        if offramps and self._utt is utt:
            self._language_at_pilot(utt, decoded, end)
        if (
            offramps
            and utt.early is None
            and self.rec.escalator is not None
            and self._utt is utt
            and self._may_stream_early()
        ):
            decision = self.rec.policy.at_pilot(
                decoded.tokens,
                (end - utt.start) / RATE,
                self._speech_ratio(utt.start, end),
                utt.pilot_agreement,
            )
            if decision.escalate:
                utt.early_p = decision.p_wrong
                name = self.rec.model.name
                context = edge_context(
                    utt.id, decoded, decision.p_wrong, Reason.EARLY_PILOT, name, False, hotwords=self.hotwords
                )
                utt.early = self.rec.escalator.open_early(self.id, context)
                if utt.early is not None:
                    self.rec.metrics.escalations.labels(Reason.EARLY_PILOT.value).inc()
                    self._send_early(utt, self._ring.total_written)
        self._after_audio()

    def _language_at_pilot(self, utt: Utterance, decoded: Decoded, end: int) -> None:
        """Early escalation for language: a pilot already judged not English starts streaming the
        utterance to the cloud for detection (replacing an early stream that asks for English)."""
        policy, escalator = self.rec.language, self.rec.escalator
        if policy is None or escalator is None or utt.early_language:
            return
        if not self.rec.settings.other_languages_to_cloud:
            return  # such audio stays on the device: the final decides, nothing is streamed early
        audio_s, speech_ratio = (end - utt.start) / RATE, self._speech_ratio(utt.start, end)
        if not policy.at_pilot(decoded.tokens, audio_s, speech_ratio, utt.pilot_agreement).other:
            return
        if utt.early is not None:
            utt.early.cancel()  # it asks for English
        name = self.rec.model.name
        context = edge_context(utt.id, decoded, 1.0, Reason.LANGUAGE, name, False, hotwords=self.hotwords)
        utt.early = escalator.open_early(self.id, _detection(context))
        utt.early_language = utt.early is not None
        if utt.early is not None:
            self.rec.metrics.escalations.labels(Reason.LANGUAGE.value).inc()
            utt.early_sent = utt.start  # a new stream: the utterance's audio from its start
            self._send_early(utt, self._ring.total_written)

    def _may_stream_early(self) -> bool:
        """Whether audio may stream to the cloud before the utterance's language was judged on a decode
        of that very audio: not when other-language speech must stay on the device (it then leaves only
        after the final, or the speculative final, judged it English)."""
        return self.rec.language is None or self.rec.settings.other_languages_to_cloud

    def _agreement(self, decoded: Decoded, previous: Decoded | None) -> float:
        return pilot_agreement(decoded, previous, self.rec.model.capabilities.prefix_verification)

    def _send_early(self, utt: Utterance, now: int) -> None:
        assert utt.early is not None
        start = max(utt.start, utt.early_sent)
        utt.early.send_audio(float_to_pcm16(self._ring.read_range(start, now)))
        utt.early_sent = now

    # -- finals --------------------------------------------------------------------------

    async def _run_final(self, utt: Utterance, end: int) -> FinalOutcome:
        audio = self._ring.read_range(utt.start, end)
        stream, samples = utt.stream, end - utt.start
        stop = self._stop_check(samples / RATE, self._speech_ratio(utt.start, end))
        decoded = await self.rec.worker.run_final(lambda: stream.finalize(samples, stop))
        return FinalOutcome(decoded, audio)

    def _stop_check(self, seconds: float, speech_ratio: float) -> StopCheck | None:
        """The offramp asked during the final decode: stop once the outcome is clearly an escalation."""
        settings, policy = self.rec.settings, self.rec.policy
        if not settings.offramps or settings.always_cloud or self.rec.escalator is None:
            return None  # (without a cloud, a stopped decode would leave the user its first words only)

        def stop(tokens: Sequence[TokenInfo]) -> bool:
            return policy.should_stop(tokens, seconds, speech_ratio)

        return stop

    def _finalize(self, utt: Utterance, end: int, reason: str) -> None:
        if utt.speculative is not None and utt.speculative_end == end:
            decode: asyncio.Future[FinalOutcome] = utt.speculative
        else:
            if utt.speculative is not None:
                utt.speculative.cancel()
            if utt.cloud_ahead is not None:
                utt.cloud_ahead.cancel()
                utt.cloud_ahead = None
            decode = asyncio.ensure_future(self._run_final(utt, end))
        previous = self._last_final
        task = asyncio.ensure_future(self._complete(utt, decode, end, reason, previous))
        self._last_final = task
        self._finals = [t for t in self._finals if not t.done()] + [task]

    async def _complete(
        self,
        utt: Utterance,
        decode: asyncio.Future[FinalOutcome],
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
        decode: asyncio.Future[FinalOutcome],
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
        s = self.rec.settings
        plan = self._plan(utt, d, end)
        if self.rec.offload is not None and plan.edge_usable:
            # Every English final moves the target offload's threshold, escalated or not; a decode the
            # offramp stopped counts as P(wrong) 1: it was above any threshold.
            self.rec.offload.observe(plan.score)
            self.rec.metrics.escalation_threshold.set(self.rec.offload.threshold())
        cloud = events.NO_CLOUD
        p_edge, edge_usable, edge_features = plan.p_edge, plan.edge_usable, plan.features
        if plan.escalate:
            cloud = await self._ask_cloud(utt, outcome, plan, duration, endpoint_at)
            if d.stopped and cloud.p_wrong is None:
                # The offramp stopped the decode for the cloud, and the cloud cannot answer now: the user
                # gets the whole edge result (not its first words); a correction follows if it was queued.
                stream, samples = utt.stream, end - utt.start
                d = await self.rec.worker.run_final(lambda: stream.finalize(samples))
                replanned = self._plan(utt, d, end)
                p_edge, edge_usable, edge_features = (
                    replanned.p_edge,
                    replanned.edge_usable,
                    replanned.features,
                )
        elif utt.early is not None:
            utt.early.cancel()  # other-language speech that must stay on the device
        language = cloud.result.language if cloud.result is not None else ENGLISH
        if not edge_usable and cloud.p_wrong is not None and is_english(language):
            # Judged not English, and the cloud heard English: the judgment was wrong (noisy English looks
            # foreign to it), so the edge's text is a candidate like any other.
            edge_usable = True
        edge_p = p_edge if edge_usable else None
        if s.always_cloud and cloud.p_wrong is not None:
            source = "cloud"
        else:
            p_better = self._cloud_beats_edge(cloud, edge_features, d.text, duration)
            source = choose(edge_p, cloud.p_wrong, language, p_better)
        self.rec.metrics.audio_seconds.inc(duration)
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # finals go out in order
        if self.closed:
            return
        self._edge_results[utt.id] = (d.text, edge_p, duration, edge_features)
        if len(self._edge_results) > _KEPT_RESULTS:  # kept only to score late corrections
            self._edge_results.pop(next(iter(self._edge_results)))
        latency = time.monotonic() - speech_end_at
        self.rec.metrics.final_latency.observe(latency)
        reason = plan.reason.value if plan.reason is not None else None
        if reason is None and not edge_usable:
            reason = Reason.LANGUAGE.value  # kept on the device (privacy, or no cloud): the final says why
        log.info(
            "final utterance=%s source=%s escalated=%s reason=%s latency=%.0fms",
            utt.id, source, plan.escalate, reason or "-", 1000 * latency,
            extra={"utterance_id": utt.id, "session_id": self.id, "source": source,
                   "escalated": plan.escalate, "latency_ms": round(1000 * latency, 1),
                   "cloud_pending": cloud.pending},
        )  # fmt: skip
        verdict = utt.endpoint if end_reason == "silence" else None
        span = events.UtteranceSpan(utt.id, utt.start / RATE, end / RATE, end_reason, utt.pilots, verdict)
        words = self.rec.model.words(d.tokens)
        edge = events.EdgeVerdict(d.text, p_edge, words, d.reused_tokens, usable=edge_usable)
        finalize_s = time.monotonic() - endpoint_at
        self._emit(
            events.final(span, edge, cloud, source, reason, latency, finalize_s, escalated=plan.escalate)
        )

    async def _cloud_request(
        self,
        utt: Utterance,
        outcome: FinalOutcome,
        p_edge: float,
        reason: Reason,
        duration: float,
        detect: bool = False,
    ) -> tuple[speech_pb2.EdgeContext, bytes]:
        """The escalation's context (with the edge's n-best when asked for) and audio. ``detect``: the
        speech was judged not English, the cloud is asked to detect its language."""
        settings, model = self.rec.settings, self.rec.model
        alternatives: list[Hypothesis] = []
        caps, n = model.capabilities, settings.edge_n_best
        if (
            n > 1
            and caps.n_best
            and not detect
            and (caps.max_audio_s is None or duration <= caps.max_audio_s)
        ):
            stream = utt.stream
            alternatives = await self.rec.worker.run_final(lambda: stream.n_best(n))
        d = outcome.decoded
        context = edge_context(utt.id, d, p_edge, reason, model.name, True, alternatives, self.hotwords)
        return _detection(context) if detect else context, float_to_pcm16(outcome.audio)

    async def _ask_cloud(
        self, utt: Utterance, outcome: FinalOutcome, plan: EscalationPlan, duration: float, endpoint_at: float
    ) -> events.CloudVerdict:
        """Send the escalated utterance (with the edge's n-best) to the cloud, within the live deadline;
        a speculative escalation of the same audio answers instead when it succeeded."""
        escalator, settings = self.rec.escalator, self.rec.settings
        assert escalator is not None and plan.reason is not None
        if plan.count_now:
            self.rec.metrics.escalations.labels(plan.reason.value).inc()
        cloud: CloudResult | None = None
        ahead, utt.cloud_ahead = utt.cloud_ahead, None
        if ahead is not None:
            try:
                cloud = await ahead
            except CloudUnavailable:
                cloud = None  # the regular request below tries again, and queues on failure
        if cloud is None:
            if utt.early is not None and utt.early_language != plan.detect_language:
                utt.early.cancel()  # it asks for English, and the final decode was judged another language
                utt.early = None
            context, pcm = await self._cloud_request(
                utt, outcome, plan.p_edge, plan.reason, duration, plan.detect_language
            )
            deadline = max(0.05, settings.cloud_deadline_s - (time.monotonic() - endpoint_at))
            if utt.early is not None:
                cloud = await escalator.finish_early(utt.early, self.id, context, pcm, deadline)
            else:
                cloud = await escalator.recognize(self.id, context, pcm, deadline)
        if cloud is None:
            return events.CloudVerdict(None, None, pending=True)
        d = outcome.decoded
        p_cloud = self._cloud_p_wrong(cloud, d.text, duration) if cloud.hypotheses else None
        return events.CloudVerdict(cloud, p_cloud, pending=False)

    def on_correction(self, utterance_id: str, cloud: CloudResult) -> None:
        """A queued escalation answered after its final went out: tell the client."""
        if self.closed or not cloud.hypotheses:
            return
        edge_text, p_edge, duration, features = self._edge_results.get(utterance_id, ("", 1.0, 1.0, None))
        p_cloud = self._cloud_p_wrong(cloud, edge_text, duration)
        verdict = events.CloudVerdict(cloud, p_cloud, pending=False)
        p_better = self._cloud_beats_edge(verdict, features, edge_text, duration)
        text = cloud.hypotheses[0].text
        self._emit(
            events.correction(utterance_id, edge_text, p_edge, text, p_cloud, cloud.language, p_better)
        )

    # -- helpers -------------------------------------------------------------------------

    def _cloud_p_wrong(self, cloud: CloudResult, edge_text: str, duration: float) -> float:
        best = cloud.hypotheses[0]
        if not is_english(cloud.language):
            # The cloud's confidence model was fitted on English, with agreement with the edge's text as
            # a feature (meaningless against an English-only model's reading of other speech): Whisper's
            # own confidence instead.
            return 1.0 - best.confidence
        model = self.rec.calibration.cloud
        return cloud_p_wrong(model, best.avg_logprob, best.no_speech_prob, best.text, edge_text, duration)

    def _cloud_beats_edge(
        self, cloud: events.CloudVerdict, edge: dict[str, float] | None, edge_text: str, duration: float
    ) -> float | None:
        """P(cloud beats edge) by the calibration's ``pick`` model; None without one, without both texts,
        or for a decode the offramp stopped."""
        pick = self.rec.calibration.pick
        if pick is None or edge is None or cloud.result is None or not cloud.result.hypotheses:
            return None
        best = cloud.result.hypotheses[0]
        return cloud_beats_edge(
            pick, edge, best.avg_logprob, best.no_speech_prob, best.text, edge_text, duration
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


def _detection(context: speech_pb2.EdgeContext) -> speech_pb2.EdgeContext:
    """The context of an escalation of speech judged not English: the cloud detects the language, and the
    edge's hypotheses (English words for other speech) are no candidates for its second pass."""
    context.other_language = True
    del context.n_best[:]
    return context
