"""Prometheus metrics: HTTP traffic counted by the request-context middleware, and deletion-request
gauges read from the database when /metrics is scraped (Postgres is the source of truth, so the numbers
agree across API processes and survive restarts)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

log = logging.getLogger("lethe.metrics")

# Seconds; dense below 50 ms, where the intake latency target lies.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Label for requests that matched no route: the raw path would be unbounded (and may carry identifiers).
UNMATCHED_ROUTE = "<unmatched>"


class HttpMetrics:
    """Counters and the latency histogram of one API process, in their own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lethe_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "lethe_http_request_duration_seconds",
            "Time from the first byte of a request to the end of its answer, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.failed = Counter(
            "lethe_http_requests_failed",
            "HTTP requests that ended in a 5xx answer or an unhandled error, by route template.",
            ["route"],
            registry=registry,
        )
        # Label lookups take a lock in prometheus_client; the children are cached once per label set.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if status >= 500:
            self.failed.labels(route).inc()


class DeletionRequestCollector(Collector):
    """Deletion requests by status, the age of the oldest open one, and failed requests so far."""

    def __init__(self, engine_factory: Callable[[], Engine]) -> None:
        self._engine_factory = engine_factory

    def describe(self) -> Iterable[Metric]:
        # Registering must not touch the database: describe the families without samples.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        by_status, failed, database_up = self._families()
        try:
            counts, oldest_open = self._read_database()
        except Exception as exc:  # the scrape still answers, with lethe_metrics_database_up 0
            log.warning("deletion-request metrics unavailable: %s", type(exc).__name__)
            database_up.add_metric([], 0)
            yield database_up
            return
        for status, count in sorted(counts.items()):
            by_status.add_metric([status], count)
        failed.add_metric([], counts.get("failed", 0))
        oldest_age = GaugeMetricFamily(
            "lethe_deletion_request_oldest_open_age_seconds",
            "Age of the oldest open deletion request (not completed, failed, canceled, no_data); 0 if none.",
        )
        age = (datetime.now(UTC) - _as_utc(oldest_open)).total_seconds() if oldest_open else 0.0
        oldest_age.add_metric([], max(age, 0.0))
        database_up.add_metric([], 1)
        yield from (by_status, oldest_age, failed, database_up)

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "lethe_deletion_requests", "Deletion requests by status (all tenants).", labels=["status"]
            ),
            CounterMetricFamily(
                "lethe_deletion_requests_failed",
                "Deletion requests that failed: escalation ran out and the old version still serves.",
            ),
            GaugeMetricFamily(
                "lethe_metrics_database_up", "1 when the last scrape could read the database, else 0."
            ),
        )

    def _read_database(self) -> tuple[dict[str, int], datetime | None]:
        from app.requests.models import OPEN_STATUSES, DeletionRequest

        with self._engine_factory().connect() as conn:
            rows = conn.execute(
                select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)
            ).all()
            oldest_open = conn.execute(
                select(func.min(DeletionRequest.received_at)).where(DeletionRequest.status.in_(OPEN_STATUSES))
            ).scalar_one()
        return {status: count for status, count in rows}, oldest_open


def build_registry(engine_factory: Callable[[], Engine]) -> tuple[CollectorRegistry, HttpMetrics]:
    """One registry per app, so several apps in one test process keep separate counts."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    http = HttpMetrics(registry)
    registry.register(DeletionRequestCollector(engine_factory))
    return registry, http


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes through a Core query; they are stored in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
