"""Prometheus metrics of one edge agent (its own registry)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EdgeMetrics:
    def __init__(self, queue_depth: Callable[[], float], sessions: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.utterances = Counter("edge_utterances", "Utterances detected", registry=self.registry)
        self.escalations = Counter(
            "edge_escalations", "Utterances sent to the cloud, by reason", ["reason"], registry=self.registry
        )
        self.pilot_runs = Counter("edge_pilot_runs", "Pilot decodes published", registry=self.registry)
        self.final_latency = Histogram(
            "edge_final_latency_seconds",
            "From end of speech (audio timeline) to the final event",
            buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
            registry=self.registry,
        )
        self.cloud_errors = Counter(
            "edge_cloud_errors", "Failed cloud calls, by kind", ["kind"], registry=self.registry
        )
        self.corrections = Counter("edge_corrections", "Late cloud answers delivered", registry=self.registry)
        self.queue_depth = Gauge("edge_queue_depth", "Escalations waiting on disk", registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.escalation_threshold = Gauge(
            "edge_escalation_threshold",
            "P(edge wrong) above which a final escalates (moves with a target offload rate)",
            registry=self.registry,
        )
        self.sessions = Gauge("edge_sessions", "Open WebSocket sessions", registry=self.registry)
        self.sessions.set_function(sessions)
        self.inference_seconds = Counter(
            "edge_inference_seconds",
            "Time the inference thread spent, by job kind",
            ["kind"],
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "edge_audio_seconds", "Seconds of utterance audio finalized", registry=self.registry
        )
        self.errors = Counter(
            "edge_client_errors", "Error events sent, by code", ["code"], registry=self.registry
        )
