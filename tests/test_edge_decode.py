"""The edge model on real audio: WER, and PASU's pilot-verified final equals the plain final."""

from __future__ import annotations

import pytest

from edge_agent.asr.decoding import greedy_decode
from edge_agent.asr.moonshine import MoonshineModel
from tests.speech import Clip, wer

pytestmark = pytest.mark.model


def test_edge_wer_on_clean_speech(
    edge_model: MoonshineModel, real_clips: list[Clip], tts_clips: list[Clip]
) -> None:
    for clips, limit in ((real_clips, 0.15), (tts_clips, 0.15)):
        hyps = [greedy_decode(edge_model, edge_model.encode(c.samples())).text for c in clips]
        assert wer([c.text for c in clips], hyps) < limit


@pytest.mark.parametrize("fraction", [0.4, 0.7, 0.95])
def test_pilot_verified_final_equals_plain_final(
    edge_model: MoonshineModel, real_clips: list[Clip], tts_clips: list[Clip], fraction: float
) -> None:
    reused_total = 0
    for clip in real_clips + tts_clips:
        audio = clip.samples()
        plain = greedy_decode(edge_model, edge_model.encode(audio))
        pilot = greedy_decode(edge_model, edge_model.encode(audio[: int(len(audio) * fraction)]))
        verified = greedy_decode(edge_model, edge_model.encode(audio), pilot=pilot.ids)
        assert verified.ids == plain.ids, clip.path.name
        assert verified.text == plain.text
        assert verified.decoder_calls <= plain.decoder_calls
        assert [t.logprob for t in verified.tokens] == pytest.approx(
            [t.logprob for t in plain.tokens], abs=1e-3
        )
        reused_total += verified.reused_tokens
    assert reused_total > 0  # the pilot's work is really reused


def test_full_pilot_makes_the_final_one_pass(edge_model: MoonshineModel, real_clips: list[Clip]) -> None:
    clip = next(c for c in real_clips if c.kind == "read")
    encoded = edge_model.encode(clip.samples())
    plain = greedy_decode(edge_model, encoded)
    verified = greedy_decode(edge_model, encoded, pilot=plain.ids)
    assert verified.ids == plain.ids
    assert verified.reused_tokens == len(plain.ids)
    assert verified.decoder_calls == 1  # one parallel pass, no sequential steps


def test_stop_check_ends_decoding_early(edge_model: MoonshineModel, real_clips: list[Clip]) -> None:
    clip = next(c for c in real_clips if c.kind == "read")
    stopped = greedy_decode(edge_model, edge_model.encode(clip.samples()), stop=lambda toks: len(toks) >= 3)
    assert len(stopped.tokens) == 3 and not stopped.finished
