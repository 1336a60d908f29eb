"""Prometheus metrics under TGI's names (tgi_*), plus camelid_sequences_in_batch for leak checks.

Each server gets its own registry so several servers (tests) can live in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("tgi_request_count", "Generation requests received", registry=r)
        self.success = Counter("tgi_request_success", "Generation requests finished", registry=r)
        self.failure = Counter("tgi_request_failure", "Failed requests", ["err"], registry=r)
        self.cancelled = Counter("camelid_request_cancelled", "Sequences cancelled by disconnects", registry=r)
        self.generated = Counter("tgi_request_generated_tokens_total", "Tokens generated", registry=r)
        self.input_length = Histogram(
            "tgi_request_input_length", "Prompt tokens", buckets=(8, 32, 128, 512, 2048, 8192), registry=r
        )
        self.duration = Histogram("tgi_request_duration", "Request seconds", registry=r)
        self.first_token = Histogram("camelid_time_to_first_token_seconds", "Seconds to first token", registry=r)
        self.step = Histogram(
            "tgi_batch_forward_duration", "Seconds per decode step", ["method"], registry=r
        )
        self.batch_size = Gauge("tgi_batch_current_size", "Sequences in the running batch", registry=r)
        self.in_batch = Gauge(
            "camelid_sequences_in_batch", "Sequences held by the scheduler (queued or running)", registry=r
        )
        self.queue_size = Gauge("tgi_queue_size", "Sequences waiting for prefill", registry=r)
        self.in_flight = Gauge("camelid_requests_in_flight", "HTTP generation requests in flight", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
