"""The server's Prometheus metrics (prometheus-client), in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llmops_requests", "Requests by endpoint and status code", ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("llmops_request_errors", "Requests answered with 4xx or 5xx", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "llmops_request_duration_seconds", "Time from request to response", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.model_version = Gauge("llmops_served_model_version", "The version being served", ["registered_model"], registry=self.registry)
        self.swaps = Counter("llmops_model_swaps", "Versions swapped in, the first load included", registry=self.registry)
        self.log_rows = Counter(
            "llmops_inference_log_rows", "inference_log rows by outcome: written, dropped (queue full), failed (write error)",
            ["outcome"], registry=self.registry,
        )
        self.batch_texts = Histogram(
            "llmops_embedding_batch_texts", "Distinct texts per micro-batched model call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        for outcome in ("written", "dropped", "failed"):
            self.log_rows.labels(outcome)

    def watch(self, name: str, pending: Callable[[], float], load_failures: Callable[[], float]) -> None:
        """Gauges read when scraped: rows waiting for the log writer, versions that failed to load."""
        Gauge("llmops_inference_log_pending_rows", "Rows queued for the inference_log", registry=self.registry).set_function(pending)
        Gauge("llmops_model_load_failures", "Champion versions that failed to load", registry=self.registry).set_function(load_failures)
        self.model_version.labels(name)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
