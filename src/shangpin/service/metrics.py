"""Prometheus metrics of one service instance (its own registry, so tests can run several apps side by side)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from shangpin.service.security import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Request counts and latencies per route, model batch sizes, model version and review-queue depth."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_version: str, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shangpin_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "shangpin_http_request_duration_seconds",
            "Time to answer, by route.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "shangpin_model_batch_size",
            "Products per model call (after micro-batching).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.request_products = Histogram(
            "shangpin_request_products",
            "Products per enrichment request.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        info = Gauge(
            "shangpin_model_info", "The model being served (value 1).", ["version"], registry=self.registry
        )
        info.labels(version=model_version).set(1)
        depth = Gauge(
            "shangpin_review_queue_depth",
            "Pending review suggestions (NaN while the database is unreachable).",
            registry=self.registry,
        )

        def read_depth() -> float:
            try:
                return float(queue_depth())
            except Exception:
                return math.nan

        depth.set_function(read_depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting and timing every HTTP request under its route template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route: Any = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=name, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=name).observe(time.perf_counter() - started)
