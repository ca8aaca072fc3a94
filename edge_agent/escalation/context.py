"""What the edge tells the cloud about an utterance it escalates: the ``EdgeContext`` proto.

The counterpart of ``CloudResult.from_proto``: the session deals in typed edge results, and only the
escalation package speaks protobuf.
"""

from __future__ import annotations

from collections.abc import Sequence

from asr_common.protos import speech_pb2
from edge_agent.asr.interface import Decoded, Hypothesis
from edge_agent.offramp import Reason

_REASONS = {
    Reason.LOW_CONFIDENCE: speech_pb2.LOW_CONFIDENCE,
    Reason.EARLY_PILOT: speech_pb2.EARLY_PILOT,
    Reason.DECODE_STOPPED: speech_pb2.LOW_CONFIDENCE,
    Reason.LONG_UTTERANCE: speech_pb2.LONG_UTTERANCE,
    Reason.FORCED: speech_pb2.FORCED,
    Reason.LANGUAGE: speech_pb2.LANGUAGE,
}


def edge_context(
    utterance_id: str,
    decoded: Decoded,
    p_wrong: float,
    reason: Reason,
    edge_model: str,
    final: bool,
    alternatives: Sequence[Hypothesis] = (),
    hotwords: Sequence[str] = (),
) -> speech_pb2.EdgeContext:
    """The edge's best hypothesis (with its calibrated confidence), its n-best alternatives, and the
    session's hotwords (the cloud biases its decode with them too)."""
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
        edge_model=edge_model,
        is_final=final,
        hotwords=list(hotwords),
    )
