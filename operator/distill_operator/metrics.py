"""The operator's own Prometheus metrics (port --metrics-port, path /metrics).

Names are a contract, documented in docs/metrics.md (a test checks both ways).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from distill_api import JobPhase

RECONCILES = Counter(
    "distill_operator_reconcile_total",
    "Handler runs by handler and outcome (success|error).",
    ["handler", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "distill_operator_reconcile_duration_seconds",
    "Handler run time.",
    ["handler"],
)
JOBS = Gauge("distill_operator_jobs", "DistillJobs seen by this operator, by phase.", ["phase"])
SCRAPE_ERRORS = Counter(
    "distill_operator_progress_scrape_errors_total",
    "Failed reads of a trainer's /metrics by the progress timer.",
)

F = TypeVar("F", bound=Callable[..., Any])


def instrumented(handler: str) -> Callable[[F], F]:
    """Count and time a (synchronous) kopf handler; any exception is an `error` outcome."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = fn(*args, **kwargs)
                outcome = "success"
                return result
            finally:
                RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - started)
                RECONCILES.labels(handler, outcome).inc()

        return wrapper  # type: ignore[return-value]

    return decorate


class PhaseTracker:
    """Keeps `distill_operator_jobs{phase}` equal to the phases of the jobs currently watched."""

    def __init__(self, gauge: Gauge = JOBS) -> None:
        self._gauge = gauge
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        for phase in JobPhase:
            gauge.labels(phase.value).set(0)

    def observe(self, uid: str, phase: str | None, deleted: bool = False) -> str | None:
        """Record a job's phase (None: not reported yet, counted as Pending).

        Returns the phase recorded before, None for a job not seen yet by this process.
        """
        with self._lock:
            if deleted:
                previous = self._phases.pop(uid, None)
            else:
                previous = self._phases.get(uid)
                self._phases[uid] = phase or JobPhase.PENDING.value
            counts = Tally(self._phases.values())
            for label in {*counts, *(p.value for p in JobPhase)}:
                self._gauge.labels(label).set(counts.get(label, 0))
        return previous
