"""Prometheus metrics of one cloud server (its own registry, so servers in one process stay apart)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CloudMetrics:
    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cloud_requests",
            "Requests answered, by interface, route and status",
            ["interface", "route", "status"],
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "cloud_inference_seconds",
            "Time spent in the model per request",
            ["operation"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "cloud_audio_seconds",
            "Seconds of audio processed",
            ["operation"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "cloud_queue_depth", "Inference requests admitted (running plus waiting)", registry=self.registry
        )
        self.queue_depth.set_function(queue_depth)
        self.cancelled = Counter(
            "cloud_cancelled_requests",
            "Requests whose client went away (gRPC cancel or deadline, REST disconnect) before their "
            "answer: queued ones never run, running ones stop at their next check",
            ["stage"],
            registry=self.registry,
        )
        self.model_loaded = Gauge("cloud_model_loaded", "1 once the model is loaded", registry=self.registry)
        self.pilots = Counter(
            "cloud_pilots",
            "Pilots of StreamingRecognize streams: started, completed, cancelled (a request needed the "
            "worker), failed, skipped (due while the pool was busy)",
            ["event"],
            registry=self.registry,
        )
        self.pilot_tokens = Counter(
            "cloud_pilot_tokens",
            "Tokens finals took from their stream's pilot after verifying them on the full audio",
            registry=self.registry,
        )
