"""Prometheus metrics of the math grader, one ``CollectorRegistry`` per app instance.

Every metric carries a ``distilljob`` label (``DISTILL_JOB_NAME``) so that one Prometheus can
tell the graders of several DistillJobs apart; items also carry their ``data_source`` (the first
``MAX_SOURCES`` distinct ones; later ones are counted as ``other``, so a client cannot grow the
series without bound). Served by the app at ``GET /metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from distill_grader.pool import PoolResult
from distill_grader.schema import DEFAULT_SOURCE, Reason

MAX_SOURCES = 32
OTHER_SOURCE = "other"

_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITEM_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_ITEM_BUCKETS += (5, 10, 30, 60)
_BATCH_BUCKETS = (1, 8, 32, 128, 256, 512, 1024, 2048, 4096, 8192)


class GraderMetrics:
    """The grader's metrics, registered in their own registry."""

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.registry = CollectorRegistry()
        job = ["distilljob"]
        reg = self.registry
        self.requests = Counter(
            "grader_requests",
            "POST /v1/grade requests by HTTP status.",
            [*job, "status"],
            registry=reg,
        )
        self.items = Counter(
            "grader_items",
            "Items graded, by data_source and reason.",
            [*job, "data_source", "reason"],
            registry=reg,
        )
        self._sources: set[str] = set()
        self.request_seconds = Histogram(
            "grader_request_duration_seconds",
            "Wall time of one POST /v1/grade (whole batch).",
            job,
            buckets=_REQUEST_BUCKETS,
            registry=reg,
        )
        self.item_seconds = Histogram(
            "grader_item_duration_seconds",
            "Wall time of one item inside a grading worker.",
            job,
            buckets=_ITEM_BUCKETS,
            registry=reg,
        )
        self.pool_restarts = Counter(
            "grader_pool_restarts",
            "Grading workers replaced (deadline kills and crashes).",
            job,
            registry=reg,
        )
        self.inflight = Gauge(
            "grader_inflight_requests", "POST /v1/grade requests being served.", job, registry=reg
        )
        self.batch_size = Histogram(
            "grader_batch_size",
            "Items per POST /v1/grade request.",
            job,
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        # Export every series from the start (at 0), so rates and alerts work before traffic.
        self._register_source(DEFAULT_SOURCE)
        for metric in (self.request_seconds, self.item_seconds, self.pool_restarts):
            metric.labels(job_name)
        for metric in (self.inflight, self.batch_size):
            metric.labels(job_name)

    def count_request(self, status: int, seconds: float) -> None:
        self.requests.labels(self.job_name, str(status)).inc()
        self.request_seconds.labels(self.job_name).observe(seconds)

    def _register_source(self, source: str) -> str:
        """The label of ``source`` (``other`` past ``MAX_SOURCES``), its series exported at 0."""
        if source not in self._sources:
            if len(self._sources) >= MAX_SOURCES:
                return OTHER_SOURCE
            self._sources.add(source)
            for reason in Reason:
                self.items.labels(self.job_name, source, reason.value)
        return source

    def count_batch(self, results: Iterable[PoolResult], sources: Iterable[str]) -> None:
        """Count one answered request: ``results`` and each item's ``data_source``, in order."""
        results = list(results)
        self.batch_size.labels(self.job_name).observe(len(results))
        item_seconds = self.item_seconds.labels(self.job_name)
        for result, source in zip(results, sources, strict=True):
            label = self._register_source(source)
            self.items.labels(self.job_name, label, result.verdict.reason.value).inc()
            if result.seconds is not None:
                item_seconds.observe(result.seconds)

    def count_restart(self) -> None:
        self.pool_restarts.labels(self.job_name).inc()
