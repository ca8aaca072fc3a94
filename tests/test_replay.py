"""The cloud's answer cache for retried utterances (pure logic: exact asserts)."""

from __future__ import annotations

from asr_common.protos import speech_pb2
from cloud_server.replay import AnswerCache, utterance_key


def _context(utterance_id: str = "u-1", *edge: str) -> speech_pb2.EdgeContext:
    return speech_pb2.EdgeContext(
        utterance_id=utterance_id, n_best=[speech_pb2.EdgeHypothesis(text=t, log_prob=-1.5) for t in edge]
    )


CONFIG = speech_pb2.RecognitionConfig(language="en", n_best=2)


def test_the_key_is_the_whole_request_and_none_without_an_id() -> None:
    key = utterance_key(_context("u-1", "hello"), CONFIG, b"\x01\x00" * 10)
    assert key is not None and len(key) == 64
    assert key == utterance_key(_context("u-1", "hello"), CONFIG, b"\x01\x00" * 10)
    others = {
        utterance_key(_context("u-2", "hello"), CONFIG, b"\x01\x00" * 10),
        utterance_key(_context("u-1", "hello"), CONFIG, b"\x02\x00" * 10),
        utterance_key(_context("u-1", "hullo"), CONFIG, b"\x01\x00" * 10),
        utterance_key(_context("u-1"), CONFIG, b"\x01\x00" * 10),
        utterance_key(
            _context("u-1", "hello"), speech_pb2.RecognitionConfig(language="en"), b"\x01\x00" * 10
        ),
    }
    assert len(others) == 5 and key not in others
    assert utterance_key(_context(""), CONFIG, b"\x01\x00") is None


def test_answers_expire_and_the_oldest_go_first() -> None:
    now = [0.0]
    cache = AnswerCache(max_items=2, ttl_s=10.0, clock=lambda: now[0])
    answer = speech_pb2.RecognizeResponse(utterance_id="u-1", hypotheses=[speech_pb2.Hypothesis(text="hi")])
    cache.put("a", answer)
    replayed = cache.get("a")
    assert replayed == answer and replayed is not answer
    assert cache.get("b") is None and cache.get(None) is None
    cache.put(None, answer)
    assert len(cache) == 1
    now[0] = 10.5
    assert cache.get("a") is None and len(cache) == 0
    for key in ("x", "y", "z"):
        cache.put(key, answer)
    assert (cache.get("x"), cache.get("y") == answer, cache.get("z") == answer) == (None, True, True)


def test_a_zero_sized_cache_keeps_nothing() -> None:
    cache = AnswerCache(max_items=0, ttl_s=10.0)
    cache.put("a", speech_pb2.RecognizeResponse(utterance_id="u"))
    assert cache.get("a") is None and len(cache) == 0
