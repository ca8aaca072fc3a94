"""The Realtime API shapes: session updates, G.711 decoding, append-only deltas. Pure logic, exact."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.server import realtime_protocol as rp


def test_update_sets_format_turns_and_hotwords() -> None:
    config = rp.apply_update(
        rp.TranscriptionConfig(),
        {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                    "transcription": {
                        "model": "gpt-4o-transcribe",
                        "prompt": (
                            "Kubernetes, Dr.  Okonkwo;\nTallinn, a talk about clusters and the many people "
                            "who run them"
                        ),
                        "keywords": ["Okonkwo", "Kubernetes"],
                    },
                }
            },
            "include": ["item.input_audio_transcription.logprobs"],
        },
    )
    assert (config.format, config.rate, config.turn_detection, config.silence_ms) == (
        "audio/pcmu",
        8000,
        True,
        300,
    )
    assert config.hotwords == ("Okonkwo", "Kubernetes", "Dr. Okonkwo", "Tallinn")
    assert config.include_logprobs
    shown = config.session(500, 0.5)["audio"]["input"]
    assert shown["format"] == {"type": "audio/pcmu"}
    assert shown["turn_detection"]["silence_duration_ms"] == 300
    assert shown["transcription"]["model"] == "gpt-4o-transcribe"


def test_null_turn_detection_means_commits_only_and_partial_updates_keep_the_rest() -> None:
    config = rp.apply_update(rp.TranscriptionConfig(), {"audio": {"input": {"turn_detection": None}}})
    assert not config.turn_detection
    assert config.session(500, 0.5)["audio"]["input"]["turn_detection"] is None
    config = rp.apply_update(config, {"audio": {"input": {"transcription": {"language": "en"}}}})
    assert (config.turn_detection, config.language, config.format) == (False, "en", "audio/pcm")


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"type": "realtime"}, "session.type"),
        ({"audio": {"input": {"format": {"type": "audio/wav"}}}}, "session.audio.input.format.type"),
        (
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "session.audio.input.format.rate",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "push"}}}},
            "session.audio.input.turn_detection.type",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 9}}}},
            "session.audio.input.turn_detection.silence_duration_ms",
        ),
        ({"audio": {"input": {"transcription": {"prompt": 5}}}}, "session.audio.input.transcription.prompt"),
        (
            {"audio": {"input": {"transcription": {"keywords": "x"}}}},
            "session.audio.input.transcription.keywords",
        ),
        ({"audio": "pcm"}, "session.audio"),
        ("transcription", "session"),
    ],
)
def test_bad_updates_name_the_field(session: object, param: str) -> None:
    with pytest.raises(rp.ConfigError) as caught:
        rp.apply_update(rp.TranscriptionConfig(), session)
    assert caught.value.param == param


def test_the_beta_dialect_maps_onto_the_same_configuration() -> None:
    config = rp.apply_beta_update(
        rp.TranscriptionConfig(),
        {
            "input_audio_format": "g711_alaw",
            "input_audio_transcription": {"model": "whisper-1", "prompt": "Okonkwo"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
        },
    )
    assert (config.format, config.silence_ms, config.hotwords, config.model) == (
        "audio/pcma",
        700,
        ("Okonkwo",),
        "whisper-1",
    )
    shown = rp.beta_session(config, 500, 0.5)
    assert (shown["input_audio_format"], shown["turn_detection"]["silence_duration_ms"]) == ("g711_alaw", 700)
    with pytest.raises(rp.ConfigError) as caught:
        rp.apply_beta_update(config, {"input_audio_format": "opus"})
    assert caught.value.param == "session.input_audio_format"


def test_g711_decodes_to_the_standard_values() -> None:
    ulaw = np.frombuffer(rp.g711_to_pcm16(bytes([0xFF, 0x7F, 0x00, 0x80, 0xFE, 0xEF]), "audio/pcmu"), "<i2")
    assert ulaw.tolist() == [0, 0, -32124, 32124, 8, 132]
    alaw = np.frombuffer(rp.g711_to_pcm16(bytes([0xD5, 0x55, 0x2A, 0xAA]), "audio/pcma"), "<i2")
    assert alaw.tolist() == [8, -8, -32256, 32256]


def test_deltas_send_only_words_two_pilots_agree_on_and_only_append() -> None:
    item = rp.ItemText()
    assert rp.pilot_delta(item, "Turn the") == ""  # nothing to agree with yet
    assert rp.pilot_delta(item, "Turn the kit") == "Turn the"
    assert rp.pilot_delta(item, "Turn the kitchen lights") == ""  # "kit" was not confirmed
    assert rp.pilot_delta(item, "Turn the kitchen lights down") == " kitchen lights"
    assert rp.pilot_delta(item, "Turn a kitchen light down") == ""  # a revision of sent words: wait
    assert (
        rp.final_delta(item, "Turn the kitchen lights down to thirty percent.") == " down to thirty percent."
    )
    assert "".join(["Turn the", " kitchen lights", " down to thirty percent."]) == " ".join(item.sent)


def test_a_final_that_revises_sent_words_adds_no_delta() -> None:
    item = rp.ItemText(sent=["Turn", "the"])
    assert rp.final_delta(item, "Burn the toast.") == ""
    assert rp.final_delta(rp.ItemText(), "") == ""
