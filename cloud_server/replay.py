"""Idempotent utterances: an utterance the cloud has answered is answered again from memory, not
decoded twice.

The edge retries an escalation whenever it did not see the answer (a cut connection, a deadline, a
restart with the escalation still queued), so the cloud may receive the same utterance more than once.
A request is the same utterance when its ``utterance_id``, its recognition config, its audio, the
edge's hypotheses (which the second pass weighs) and the edge's hotwords are all the same; requests
without an id are never replayed. Answers are kept for ``ttl_s`` and at most ``max_items`` of them
(oldest out first).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from asr_common.protos import speech_pb2


def utterance_key(
    context: speech_pb2.EdgeContext, config: speech_pb2.RecognitionConfig, audio: bytes
) -> str | None:
    if not context.utterance_id:
        return None
    digest = hashlib.sha256()
    edge = [h.SerializeToString(deterministic=True) for h in context.n_best]
    hotwords = [h.encode() for h in context.hotwords]  # they change the decode like the config does
    parts = (context.utterance_id.encode(), config.SerializeToString(deterministic=True), audio, *edge)
    for part in (*parts, b"hotwords", *hotwords):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


class AnswerCache:
    def __init__(self, max_items: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_items = max_items
        self._ttl_s = ttl_s
        self._clock = clock
        self._answers: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str | None) -> speech_pb2.RecognizeResponse | None:
        if key is None or key not in self._answers:
            return None
        stored_at, answer = self._answers[key]
        if self._clock() - stored_at > self._ttl_s:
            del self._answers[key]
            return None
        return speech_pb2.RecognizeResponse.FromString(answer)

    def put(self, key: str | None, response: speech_pb2.RecognizeResponse) -> None:
        if key is None or self._max_items == 0:
            return
        # Serialized: a fresh copy per replay, and a compact one to hold.
        self._answers[key] = (self._clock(), response.SerializeToString())
        self._answers.move_to_end(key)
        while len(self._answers) > self._max_items:
            self._answers.popitem(last=False)
