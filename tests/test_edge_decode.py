"""The edge model on real audio: WER, PASU's pilot-verified final equals the plain final, and the
stream interface (advance / finalize / n-best) gives the same results as the decoding it wraps."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.asr.moonshine.decoding import greedy_decode
from edge_agent.asr.moonshine.model import MoonshineModel
from edge_agent.asr.moonshine.stream import MoonshineRecognizer, MoonshineStream
from edge_agent.quantize import REPORT
from tests.speech import Clip, wer

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def moonshine(edge_model: MoonshineRecognizer) -> MoonshineModel:
    return edge_model.model


def test_edge_wer_on_clean_speech(
    moonshine: MoonshineModel, real_clips: list[Clip], tts_clips: list[Clip]
) -> None:
    for clips, limit in ((real_clips, 0.15), (tts_clips, 0.15)):
        hyps = [greedy_decode(moonshine, moonshine.encode(c.samples())).text for c in clips]
        assert wer([c.text for c in clips], hyps) < limit


def _logprob_tolerance(moonshine: MoonshineModel) -> float:
    """How far one token's log-prob may move between the verifying pass (all pilot tokens at once) and
    step-by-step decoding. In fp32 only summation order differs. The default weight-only 8-bit model
    multiplies in int8 with activations quantized per block of a row, and the blocking of a call over
    several tokens differs a little from one over a single token: a few hundredths at most (0.033 on
    the test clips), the chosen tokens unchanged. (Dynamic int8, ``EDGE_QUANTIZATION=int8``, scales
    activations once per call and can change a chosen token: it is not the default for that reason.)"""
    return 0.05 if (moonshine.files.encoder.parent / REPORT).is_file() else 1e-3


@pytest.mark.parametrize("fraction", [0.4, 0.7, 0.95])
def test_pilot_verified_final_equals_plain_final(
    moonshine: MoonshineModel, real_clips: list[Clip], tts_clips: list[Clip], fraction: float
) -> None:
    reused_total = 0
    for clip in real_clips + tts_clips:
        audio = clip.samples()
        plain = greedy_decode(moonshine, moonshine.encode(audio))
        pilot = greedy_decode(moonshine, moonshine.encode(audio[: int(len(audio) * fraction)]))
        verified = greedy_decode(moonshine, moonshine.encode(audio), pilot=pilot.ids)
        assert verified.ids == plain.ids, clip.path.name
        assert verified.text == plain.text
        assert verified.decoder_calls <= plain.decoder_calls
        assert [t.logprob for t in verified.tokens] == pytest.approx(
            [t.logprob for t in plain.tokens], abs=_logprob_tolerance(moonshine)
        )
        reused_total += verified.reused_tokens
    assert reused_total > 0  # the pilot's work is really reused


def test_full_pilot_makes_the_final_one_pass(moonshine: MoonshineModel, real_clips: list[Clip]) -> None:
    clip = next(c for c in real_clips if c.kind == "read")
    encoded = moonshine.encode(clip.samples())
    plain = greedy_decode(moonshine, encoded)
    verified = greedy_decode(moonshine, encoded, pilot=plain.ids)
    assert verified.ids == plain.ids
    assert verified.reused_tokens == len(plain.ids)
    assert verified.decoder_calls == 1  # one parallel pass, no sequential steps


def test_stop_check_ends_decoding_early(moonshine: MoonshineModel, real_clips: list[Clip]) -> None:
    clip = next(c for c in real_clips if c.kind == "read")
    stopped = greedy_decode(moonshine, moonshine.encode(clip.samples()), stop=lambda toks: len(toks) >= 3)
    assert len(stopped.tokens) == 3 and not stopped.finished


def _fed(rec: MoonshineRecognizer, audio: np.ndarray, frame: int = 1600) -> MoonshineStream:
    stream = rec.create_stream()
    for i in range(0, len(audio), frame):
        stream.accept(audio[i : i + frame])
    return stream


def test_stream_pilots_then_final_equal_the_plain_decode(
    edge_model: MoonshineRecognizer, real_clips: list[Clip], tts_clips: list[Clip]
) -> None:
    model = edge_model.model
    caps = edge_model.capabilities
    assert caps.prefix_verification and caps.n_best and not caps.native_streaming
    for clip in [*real_clips[:4], *tts_clips[:4]]:
        audio = clip.samples()
        stream = edge_model.create_stream()
        pilots = []
        for cut in (len(audio) // 3, 2 * len(audio) // 3):
            stream.accept(audio[stream.samples : cut])
            pilot = stream.advance(lambda: False)
            assert pilot is not None and pilot.samples == cut
            pilots.append(pilot)
        stream.accept(audio[stream.samples :])
        assert stream.samples == len(audio)
        final = stream.finalize()
        plain = greedy_decode(model, model.encode(audio))
        assert final.ids == plain.ids and final.text == plain.text, clip.path.name
        assert final.samples == len(audio) and final.finished and not final.stopped
        # The second pilot verified the first; the final verified the second.
        assert pilots[1].reused_tokens <= len(pilots[0].ids)
        assert final.reused_tokens <= len(pilots[1].ids)
        assert final.decoder_calls <= plain.decoder_calls
        assert [w for w, _ in edge_model.words(final.tokens)] == final.text.split()


def test_stream_gives_way_to_a_waiting_final(edge_model: MoonshineRecognizer, real_clips: list[Clip]) -> None:
    clip = next(c for c in real_clips if c.kind == "read")
    stream = _fed(edge_model, clip.samples())
    assert stream.advance(lambda: True) is None


def test_speculative_finalize_leaves_the_stream_going(
    edge_model: MoonshineRecognizer, tts_clips: list[Clip]
) -> None:
    first, second = tts_clips[0].samples(), tts_clips[1].samples()
    pause = np.zeros(8000, np.float32)
    stream = edge_model.create_stream()
    stream.accept(first)
    stream.accept(pause)
    early = stream.finalize(len(first) + len(pause))  # at the first silence, before the endpoint
    stream.accept(second)  # the speaker went on
    late = stream.finalize()
    assert early.samples == len(first) + len(pause) and late.samples == stream.samples
    assert wer([tts_clips[0].text], [early.text]) < 0.2
    assert wer([f"{tts_clips[0].text} {tts_clips[1].text}"], [late.text]) < 0.2


def test_stream_final_stops_on_the_offramp_and_gives_n_best(
    edge_model: MoonshineRecognizer, real_clips: list[Clip]
) -> None:
    clip = next(c for c in real_clips if c.kind == "read" and c.duration > 3)
    stream = _fed(edge_model, clip.samples())
    stopped = stream.finalize(stop=lambda toks: len(toks) >= 4)
    assert stopped.stopped and not stopped.finished and len(stopped.tokens) == 4
    full = stream.finalize()
    alternatives = stream.n_best(3)
    assert 1 <= len(alternatives) <= 3
    assert len({h.text for h in alternatives}) == len(alternatives)
    assert alternatives[0].text == full.text or wer([full.text], [alternatives[0].text]) < 0.2


def test_long_audio_is_split_and_has_no_n_best(
    edge_model: MoonshineRecognizer, tts_clips: list[Clip]
) -> None:
    gap = np.zeros(4800, np.float32)
    audio = np.concatenate([part for c in tts_clips for part in (c.samples(), gap)])
    assert len(audio) / 16000 > edge_model.max_chunk_s
    stream = _fed(edge_model, audio, frame=16000)
    final = stream.finalize()
    assert wer([" ".join(c.text for c in tts_clips)], [final.text]) < 0.15
    assert stream.n_best(3) == []
