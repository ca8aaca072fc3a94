"""The cloud's hotword relevance filter (``cloud_server.hotword_filter``): pure matching, exact asserts."""

from __future__ import annotations

import pytest

from asr_common.protos import speech_pb2
from cloud_server.grpc_service import relevant_to_edge
from cloud_server.hotword_filter import DEFAULT_THRESHOLD, relevant_hotwords, similarity, spans, words
from cloud_server.settings import CloudSettings


def test_words_fold_case_accents_and_punctuation() -> None:
    assert words("Kubernetes' pods, Dr. Okonkwo!") == ["kubernetes", "pods", "dr", "okonkwo"]
    assert words("Zürich CAFÉ 24/7") == ["zurich", "cafe", "24", "7"]
    assert words(" ... ") == []


def test_spans_run_from_one_word_fewer_to_two_more() -> None:
    assert spans(["a", "b", "c"], 1) == ["a", "b", "c", "ab", "bc", "abc"]
    assert spans(["a", "b", "c"], 2) == ["a", "b", "c", "ab", "bc", "abc"]
    assert spans(["a", "b", "c", "d"], 3) == ["ab", "bc", "cd", "abc", "bcd", "abcd"]
    assert spans([], 1) == []


def test_similarity_is_the_best_span_of_the_best_hypothesis() -> None:
    assert similarity("Argo", ["into the Argo repository"]) == 1.0
    assert similarity("Istio", ["the is tio sidecar"]) == 1.0  # a name heard as two words
    assert similarity("Helm", ["help"]) == 0.75  # one substitution in four letters
    # "drokonkwo" against "okonkwo" (two deletions in nine) beats "doctorokonkwo" (four insertions).
    assert similarity("Dr. Okonkwo", ["ask doctor okonkwo"]) == pytest.approx(7 / 9, abs=1e-12)
    assert similarity("Kafka", ["cough car", "the kafka brokers"]) == 1.0
    assert similarity("Kafka", []) == 0.0
    assert similarity("!!", ["kafka"]) == 0.0


def test_relevant_hotwords_keep_the_list_order() -> None:
    hotwords = ("Kafka", "Argo", "Istio", "Terraform")
    assert relevant_hotwords(hotwords, ["Move the is tio settings into the Argo repository."]) == (
        "Argo",
        "Istio",
    )


def test_threshold_bounds_are_inclusive() -> None:
    assert relevant_hotwords(["Helm"], ["help"], 0.75) == ("Helm",)
    assert relevant_hotwords(["Helm"], ["help"], 0.76) == ()
    assert relevant_hotwords(["Helm", "Kafka"], ["hello"], 0.0) == ("Helm", "Kafka")
    assert relevant_hotwords(["Helm", "Kafka"], ["hello"], 1.0) == ()


def test_no_hypothesis_text_keeps_nothing() -> None:
    assert relevant_hotwords(["Kafka"], []) == ()
    assert relevant_hotwords(["Kafka"], ["", " ... "]) == ()
    assert relevant_hotwords([], ["kafka"]) == ()


def test_an_unrelated_sentence_keeps_none_of_a_domain_list() -> None:
    operations = ("Kubernetes", "Terraform", "Grafana", "Prometheus", "Kafka", "Ansible", "nginx", "Redis")
    assert relevant_hotwords(operations, ["Turn off all the lights upstairs."], DEFAULT_THRESHOLD) == ()
    assert relevant_hotwords(operations, ["Restart the cuber nettys cluster."], DEFAULT_THRESHOLD) == (
        "Kubernetes",
    )


def _context(
    final: bool, *texts: str, detail: str = "low_confidence", other: bool = False
) -> speech_pb2.EdgeContext:
    hypotheses = [speech_pb2.EdgeHypothesis(text=t) for t in texts]
    return speech_pb2.EdgeContext(
        utterance_id="u", is_final=final, n_best=hypotheses, reason_detail=detail, other_language=other
    )


def test_grpc_filters_only_final_contexts_with_hypotheses() -> None:
    on, off = CloudSettings(hotword_filter=True), CloudSettings(hotword_filter=False)
    hotwords = ("Kafka", "Argo")
    assert relevant_to_edge(hotwords, _context(True, "the argo repo"), on) == ("Argo",)
    # Any of the n-best may spell a phrase.
    assert relevant_to_edge(hotwords, _context(True, "the argo repo", "a kafka topic"), on) == hotwords
    assert relevant_to_edge(hotwords, _context(True, "hello there"), on) == ()
    # An empty final hypothesis (the edge heard nothing) is a hypothesis: nothing to keep.
    assert relevant_to_edge(hotwords, _context(True, ""), on) == ()
    # An early escalation's hypothesis covers part of the audio; no hypothesis, nothing to judge by.
    assert relevant_to_edge(hotwords, _context(False, "hello there"), on) == hotwords
    assert relevant_to_edge(hotwords, _context(True, "hello", detail="decode_stopped"), on) == hotwords
    # Speech judged not English: the edge's English guesses say nothing of the phrases in it.
    assert relevant_to_edge(hotwords, _context(True, "hello there", other=True), on) == hotwords
    assert relevant_to_edge(hotwords, _context(True), on) == hotwords
    assert relevant_to_edge(hotwords, _context(True, "hello there"), off) == hotwords
    strict = CloudSettings(hotword_filter=True, hotword_filter_threshold=1.0)
    assert relevant_to_edge(("Helm",), _context(True, "help"), strict) == ()
