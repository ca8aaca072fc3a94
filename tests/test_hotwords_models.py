"""Hotwords on the real models, on synthesized sentences of names and jargon (``scripts/bench_hotwords.py``
makes the same clips): the edge's recall rises with the list, and the list reaches Whisper, over gRPC
from a client and from the edge's start message through an escalation."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf

from asr_common.protos import speech_pb2, speech_pb2_grpc
from tests.edge_client import EdgeClient, pcm16
from tests.servers import ThreadedCloud, ThreadedEdge, edge_settings

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parent.parent
RATE = 16000


@pytest.fixture(scope="module")
def bench() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module("bench_hotwords")


def _clip(bench: Any, tmp: Path, domain: str, index: int, engine: str, voice: str) -> np.ndarray:
    """The benchmark's clip of one sentence in one voice (written as PCM16 and read back, as it does)."""
    bbs = importlib.import_module("build_bench_sets")
    synth = bbs.load_voices([bbs.Voice(engine, voice)])[bbs.Voice(engine, voice)]
    text = bench.DOMAINS[domain][index][0]
    path = tmp / f"{domain}_{index}_{engine}_{voice}.wav"
    sf.write(
        path, bench.clip_audio(synth, text, bench.sentence_number(domain, index)), RATE, subtype="PCM_16"
    )
    audio, _ = sf.read(path, dtype="float32")
    return np.asarray(audio, dtype=np.float32)


# Sentences flite kal16 says so that Moonshine misses every hotword without the list (BENCHMARKS.md,
# "Hotwords": tuning clips; 7 hotword occurrences).
EDGE_CASES = [("medicine", 0), ("medicine", 2), ("operations", 0), ("operations", 1)]


def test_moonshine_recall_rises_with_the_list(bench: Any, edge_model: Any, tmp_path: Path) -> None:
    found = {False: 0, True: 0}
    total = 0
    texts: dict[bool, list[str]] = {False: [], True: []}
    for domain, index in EDGE_CASES:
        audio = _clip(bench, tmp_path, domain, index, "flite", "kal16")
        text, targets = bench.DOMAINS[domain][index]
        total += sum(bench.occurrences(t, text) for t in targets)
        for use in (False, True):
            stream = edge_model.create_stream(hotwords=bench.domain_list(domain) if use else ())
            stream.accept(audio)
            decoded = stream.finalize().text
            texts[use].append(decoded)
            found[use] += sum(min(bench.occurrences(t, text), bench.occurrences(t, decoded)) for t in targets)
    assert total == 7
    assert found[False] / total <= 0.3, texts[False]
    assert found[True] / total >= 0.7, texts[True]


# Whisper base misspells both hotwords of this sentence (flite slt) without the list, and writes both
# with it (BENCHMARKS.md, "Hotwords": held-out clips).
CLOUD_CASE = ("operations", 6, "flite", "slt")


@pytest.fixture(scope="module")
def cloud_clip(bench: Any, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    domain, index, engine, voice = CLOUD_CASE
    return _clip(bench, tmp_path_factory.mktemp("hotwords"), domain, index, engine, voice)


def _spelled(bench: Any, text: str) -> list[str]:
    """Which of the case's hotwords ``text`` spells."""
    domain, index, _, _ = CLOUD_CASE
    return [t for t in bench.DOMAINS[domain][index][1] if bench.occurrences(t, text)]


@pytest.fixture()
def stub(cloud: ThreadedCloud) -> Iterator[speech_pb2_grpc.CloudRecognizerStub]:
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        yield speech_pb2_grpc.CloudRecognizerStub(channel)


def test_grpc_hotwords_reach_whisper(bench: Any, stub: Any, cloud_clip: np.ndarray) -> None:
    phrases = bench.domain_list(CLOUD_CASE[0])

    def recognize(config_words: tuple[str, ...], context_words: tuple[str, ...], utterance: str) -> str:
        request = speech_pb2.RecognizeRequest(
            config=speech_pb2.RecognitionConfig(language="en", sample_rate_hz=RATE, hotwords=config_words),
            audio=pcm16(cloud_clip),
            context=speech_pb2.EdgeContext(utterance_id=utterance, hotwords=context_words),
        )
        response = stub.Recognize(request, timeout=120)
        return str(response.hypotheses[0].text)

    plain = recognize((), (), "hot-1")
    assert _spelled(bench, plain) == [], plain
    # From a client's config, and from the edge's context (what an escalation carries).
    for config_words, context_words, utterance in ((phrases, (), "hot-2"), ((), phrases, "hot-3")):
        text = recognize(config_words, context_words, utterance)
        assert _spelled(bench, text) == ["Istio", "Argo"], text
    # Too many phrases is the client's error.
    with pytest.raises(grpc.RpcError) as info:
        recognize(tuple(f"w{i}" for i in range(201)), (), "hot-4")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_filter_keeps_the_hotwords_the_edge_hypothesis_spells(
    bench: Any, cloud: ThreadedCloud, stub: Any, cloud_clip: np.ndarray
) -> None:
    assert cloud.server.settings.hotword_filter  # the default this test runs with
    phrases = bench.domain_list(CLOUD_CASE[0])

    def recognize(hypothesis: str, final: bool, utterance: str) -> str:
        context = speech_pb2.EdgeContext(
            utterance_id=utterance,
            hotwords=phrases,
            is_final=final,
            n_best=[speech_pb2.EdgeHypothesis(text=hypothesis, confidence=0.2)],
        )
        request = speech_pb2.RecognizeRequest(
            config=speech_pb2.RecognitionConfig(language="en", sample_rate_hz=RATE),
            audio=pcm16(cloud_clip),
            context=context,
        )
        return str(stub.Recognize(request, timeout=120).hypotheses[0].text)

    # The edge's misspellings still match: Whisper gets those two phrases and spells both.
    text = recognize("Move the is tio sidecar settings into the argo repository.", True, "filter-1")
    assert _spelled(bench, text) == ["Istio", "Argo"], text
    # A final hypothesis that spells none of the list leaves Whisper without it, as with no list
    # (which contexts are filtered at all: tests/test_hotword_filter.py).
    text = recognize("Turn off all the lights upstairs.", True, "filter-2")
    assert _spelled(bench, text) == [], text


def test_rest_prompt_biases_like_hotwords(bench: Any, cloud: ThreadedCloud, cloud_clip: np.ndarray) -> None:
    import io

    wav = io.BytesIO()
    sf.write(wav, cloud_clip, RATE, format="WAV", subtype="PCM_16")

    def transcribe(prompt: str | None) -> str:
        data = {"model": "whisper-1", "language": "en", **({"prompt": prompt} if prompt else {})}
        files = {"file": ("clip.wav", wav.getvalue(), "audio/wav")}
        reply = httpx.post(f"{cloud.rest_url}/v1/audio/transcriptions", data=data, files=files, timeout=120)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["text"])

    assert _spelled(bench, transcribe(None)) == []
    text = transcribe(", ".join(bench.domain_list(CLOUD_CASE[0])))
    assert _spelled(bench, text) == ["Istio", "Argo"], text


def test_start_message_hotwords_reach_the_cloud_through_the_edge(
    bench: Any, edge_model: Any, cloud: ThreadedCloud, cloud_clip: np.ndarray, tmp_path: Path
) -> None:
    # The edge does not bias (bonus 0) and every utterance goes to the cloud: what the final spells right
    # came from Whisper, with the list the start message gave.
    settings = edge_settings(
        tmp_path, cloud.grpc_target, always_cloud=True, hotword_bonus=0.0, cloud_deadline_s=120.0
    )
    edge = ThreadedEdge(settings, edge_model).start()
    try:
        finals = {}
        for name, phrases in (("with", list(bench.domain_list(CLOUD_CASE[0]))), ("without", None)):
            client = EdgeClient(edge.url)
            try:
                if phrases is not None:
                    client.send_json({"type": "start", "hotwords": [""]})
                    error = client.next_event()
                    assert error["type"] == "error" and error["code"] == "bad_start", error
                    assert "hotwords[0] is empty" in error["message"]
                start: dict[str, Any] = {"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le"}
                if phrases is not None:
                    start["hotwords"] = phrases
                client.send_json(start)
                assert client.next_event()["type"] == "ready"
                client.send_audio(pcm16(np.concatenate([cloud_clip, np.zeros(RATE, np.float32)])))
                (final,) = [e for e in client.stop(timeout=300) if e["type"] == "final"]
                assert final["source"] == "cloud", final
                finals[name] = final["text"]
            finally:
                client.close()
        assert _spelled(bench, finals["with"]) == ["Istio", "Argo"], finals
        assert _spelled(bench, finals["without"]) == [], finals
    finally:
        edge.stop()


def test_whisper_prompt_keeps_the_phrases_that_fit_its_budget(model_cache: str) -> None:
    from cloud_server.engine import WhisperEngine
    from cloud_server.model_store import resolve_model

    engine = WhisperEngine(
        resolve_model("base", Path(model_cache)), compute_type="int8", cpu_threads=1, workers=1
    )
    phrases = ("Kubernetes", "Dr. Okonkwo", "Tallinn", "Michaelis Menten", "lidar")
    whole = "Kubernetes, Dr. Okonkwo, Tallinn, Michaelis Menten, lidar"
    assert engine.hotword_prompt(phrases) == whole  # a short list fits the default budget whole
    assert engine.hotword_prompt(()) is None
    # The budget counts the prompt's tokens: exactly the first two phrases fit, and a token short of
    # the third still keeps two (phrases are never cut).
    engine.hotword_prompt_tokens = engine._count_tokens("Kubernetes, Dr. Okonkwo")
    assert engine.hotword_prompt(phrases) == "Kubernetes, Dr. Okonkwo"
    engine.hotword_prompt_tokens = engine._count_tokens("Kubernetes, Dr. Okonkwo, Tallinn") - 1
    assert engine.hotword_prompt(phrases) == "Kubernetes, Dr. Okonkwo"
    engine.hotword_prompt_tokens = 2  # not even the first phrase fits: no prompt rather than a cut phrase
    assert engine.hotword_prompt(("Michaelis Menten kinetics", "lidar")) is None
    long_list = tuple(f"Zorblax {i}" for i in range(100))
    engine.hotword_prompt_tokens = 0  # the whole prompt window (223 tokens) is the only limit
    kept = (engine.hotword_prompt(long_list) or "").split(", ")
    assert kept == list(long_list[: len(kept)]) and 30 < len(kept) < 100
