"""Adaptive endpointing policy: exact verdicts for scripted evidence."""

from __future__ import annotations

import dataclasses

import pytest

from edge_agent.audio.adaptive_endpoint import (
    AdaptiveEndpointConfig,
    EndpointDecision,
    EndpointEvidence,
    decide,
    words,
)

CFG = AdaptiveEndpointConfig(base_ms=500, fast_ms=160, slow_ms=900, quiet_vad=0.1, rising_vad=0.2)
DONE = EndpointEvidence(
    text="Turn the lights off in the kitchen.",
    finished=True,
    p_end=0.95,
    pilot_text="Turn the lights off in",
    punctuates=True,
    pause_vad=(0.3, 0.05, 0.02, 0.01),
)


def verdict(**changes: object) -> EndpointDecision:
    return decide(dataclasses.replace(DONE, **changes), CFG)  # type: ignore[arg-type]


def test_a_finished_stable_sentence_in_a_quiet_pause_ends_fast() -> None:
    assert decide(DONE, CFG) == EndpointDecision("complete", 160, "sentence end, stable, quiet")
    assert verdict(text="Is it on?", pilot_text="Is it").verdict == "complete"
    assert verdict(pilot_text=None).verdict == "complete"  # no pilot ran: nothing to disagree with
    # The pilot stopped mid-word: its last word is a fragment of the final's.
    assert verdict(pilot_text="Turn the lights off in the kit").verdict == "complete"
    assert verdict(text="Turn the lights down to 30%.", pilot_text="Turn the lights").verdict == "complete"
    # The model ended without writing a full stop, yet was sure the text ended there.
    assert verdict(text="Turn the lights off in the kitchen").verdict == "complete"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("I went to the store and", "ends with 'and'"),
        ("Put it on the", "ends with 'the'"),
        ("A cup of", "ends with 'of'"),
        ("When the sun went down,", "ends with a comma"),
    ],
)
def test_a_dangling_end_waits_longer(text: str, why: str) -> None:
    assert verdict(text=text) == EndpointDecision("incomplete", 900, why)


def test_a_rising_vad_waits_longer() -> None:
    assert verdict(pause_vad=(0.05, 0.02, 0.12, 0.25)).verdict == "incomplete"
    assert verdict(pause_vad=(0.05, 0.02, 0.12, 0.25)).why == "VAD rising in the pause"
    # High but falling (the first windows fading out) is not rising.
    assert verdict(pause_vad=(0.3, 0.25, 0.05, 0.02)).verdict == "complete"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"p_end": 0.5}, "sentence end uncertain (p=0.50)"),
        ({"p_end": 0.89}, "sentence end uncertain (p=0.89)"),
        ({"p_end": None}, "sentence end unknown"),
        ({"finished": False}, "decode did not end by itself"),
        ({"pilot_text": "Turn the light of the"}, "pilot and final disagree"),
        ({"pause_vad": (0.05, 0.15, 0.12)}, "pause not quiet"),
        ({"punctuates": False}, "model writes no punctuation"),
        ({"text": "  "}, "no words"),
    ],
)
def test_anything_uncertain_keeps_the_fixed_silence(changes: dict[str, object], why: str) -> None:
    assert verdict(**changes) == EndpointDecision("default", 500, why)


def test_a_model_without_punctuation_still_waits_on_a_dangling_end() -> None:
    assert verdict(punctuates=False, text="go to the").verdict == "incomplete"


def test_words_ignore_case_and_punctuation() -> None:
    assert words("Don’t STOP, now! At 7:30.") == ["don't", "stop", "now", "at", "7", "30"]


@pytest.mark.parametrize("changes", [{"fast_ms": 600}, {"slow_ms": 400}, {"fast_ms": 0}, {"quiet_vad": 1.5}])
def test_invalid_config(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, **changes)  # type: ignore[arg-type]
