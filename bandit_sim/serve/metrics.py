"""Prometheus metrics of the server (text exposition at GET /metrics), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics

disable_created_metrics()  # no *_created series: counters and histograms only

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters and histograms the service and the app update."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.decisions = Counter("router_decisions", "Routing decisions per chosen model", ["model"], registry=r)
        self.explored = Counter("router_explored_decisions", "Decisions that explored (not the argmax utility)",
                                registry=r)
        self.passthrough = Counter("router_passthrough_requests", "Requests naming a backend (not routed)",
                                   ["model"], registry=r)
        self.feedback = Counter("router_feedback", "Feedback applied per model", ["model"], registry=r)
        self.spend = Counter("router_spend_usd", "Observed spend in USD per model (from feedback)", ["model"],
                             registry=r)
        self.lam = Gauge("router_lambda", "Current cost weight lambda of the utility", registry=r)
        self.gam = Gauge("router_gamma", "Current uncertainty weight gamma of the utility", registry=r)
        self.latency = Histogram("router_request_latency_seconds", "Server latency per request", ["endpoint"],
                                 buckets=_BUCKETS, registry=r)
        self.overhead = Histogram("router_overhead_seconds", "Server latency minus upstream latency per routed "
                                  "completion", buckets=_BUCKETS, registry=r)
        self.errors = Counter("router_errors", "Errors returned to clients, by kind", ["kind"], registry=r)
        self.upstream_errors = Counter("router_upstream_errors", "Upstream errors and timeouts per backend",
                                       ["model"], registry=r)
        self.fallbacks = Counter("router_fallbacks", "Calls retried on the next-best backend", ["model"], registry=r)
        self.saves = Counter("router_state_saves", "State files written", registry=r)
        self.replayed = Gauge("router_replayed_events", "Log events replayed at the last start", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
