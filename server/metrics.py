"""Prometheus metrics of the server (`GET /metrics`), one registry per app so tests can build several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["variant"]
        self.requests = Counter(
            "l2s_requests",
            "Chat completion requests by variant and HTTP status",
            ["variant", "status"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "l2s_time_to_first_token_seconds",
            "Time to the first generated token",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_answer_token = Histogram(
            "l2s_time_to_first_answer_token_seconds",
            "Time to the first token after the reasoning",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "l2s_request_latency_seconds",
            "End-to-end latency of a completion",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reasoning_tokens = Histogram(
            "l2s_reasoning_tokens",
            "Reasoning tokens per choice",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.answer_tokens = Histogram(
            "l2s_answer_tokens", "Answer tokens per choice", labels, buckets=_TOKEN_BUCKETS, registry=self.registry
        )
        self.budget_cuts = Counter(
            "l2s_budget_cuts", "Choices whose reasoning the thinking budget cut", labels, registry=self.registry
        )
        self.running = Gauge(
            "l2s_running_requests", "Requests generating in the engine", labels, registry=self.registry
        )
        self.waiting = Gauge(
            "l2s_waiting_requests", "Requests admitted but waiting for an engine slot", labels, registry=self.registry
        )
        self.engine_deaths = Counter(
            "l2s_engine_deaths",
            "Times a variant's vLLM engine died (its process exited)",
            labels,
            registry=self.registry,
        )
        self.engine_restarts = Counter(
            "l2s_engine_restarts", "Times a variant's engine was restarted in place", labels, registry=self.registry
        )
        self.replica_requests = Counter(
            "l2s_replica_requests",
            "Requests by the Ray Serve replica that ran them, and HTTP status (`l2s serve --ray`)",
            ["variant", "replica", "status"],
            registry=self.registry,
        )
        self.live_replicas = Gauge(
            "l2s_live_replicas",
            "Running Ray Serve replicas of a variant (`l2s serve --ray`)",
            labels,
            registry=self.registry,
        )
        self.refused = Counter(
            "l2s_refused_requests",
            "Requests refused because a variant's queue was full",
            labels,
            registry=self.registry,
        )
