"""How the trainer grades rollouts: over HTTP, or in-process when no grader URL is set.

    grader = make_grader(os.environ.get(GRADER_URL_ENV), timeout_s=spec.grader.timeout_seconds)
    results = grader.grade([GradeRequestItem(id="0", response="... \\boxed{4}", ground_truth="4")])

``HttpGraderClient`` cuts each ``grade()`` call into requests of at most ``max_batch`` items (and
``max_body_bytes`` of JSON) and POSTs them to ``{base_url}/v1/grade`` from ``concurrency``
threads at once, each on a fresh TCP connection: kube-proxy balances connections, not requests,
so one kept-alive connection would pin a whole training step to one grader pod. Each request may
take ``base_timeout_s + ceil(items / server_workers) * item_timeout_s``: the service gives every
item ``item_timeout_s``, so that bound holds even if every item runs into its deadline (and the
service answers a request by its ``request_timeout_s`` anyway, the rest of its items ``timeout``).
Connection errors and 5xx answers (a grader pod restarting or being replaced) are retried with
capped exponential backoff and jitter for up to ``retry_budget_s`` after a request's first failure.
A 4xx answer, or a read timeout past that generous bound (a hung server), raises ``GraderError``
at once. Results keep request order. ``LocalGrader`` runs the same process pool as the service
inside the caller's process. Both are context managers.

Both grade trivially gradable items in the caller first (``grade_trivially``): a response with
no answer, or whose extracted answer the grader's own fast path decides (the same spelling, two
integers, integer tuples) gets the verdict the pool would give, from string work alone (~20 µs an
item, against a pool or HTTP round trip per batch); only the rest travel. Short responses only
(``TRIVIAL_MAX_CHARS``): the pool's deadline does not guard work done in the caller.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Protocol, runtime_checkable

import httpx

from distill_grader.extract import extract_answer
from distill_grader.grading import GRADING_RULES, fast_match
from distill_grader.pool import GradingPool
from distill_grader.schema import GradeRequestItem, GradeResponse, GradeResult, Reason

log = logging.getLogger(__name__)

GRADER_URL_ENV = "DISTILL_GRADER_URL"
_RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)
_CONNECT_TIMEOUT_S = 10.0
_WRITE_TIMEOUT_S = 60.0  # a body is at most a few MB


class GraderError(RuntimeError):
    """The grader could not grade a batch (after retries, where retrying made sense)."""


@runtime_checkable
class Grader(Protocol):
    """Anything that grades a batch; results are in item order."""

    def grade(self, items: Sequence[GradeRequestItem]) -> list[GradeResult]: ...


# Longer responses (or ground truths) go to the pool even when trivial: its deadline guards them.
TRIVIAL_MAX_CHARS = 4096


def grade_trivially(item: GradeRequestItem) -> GradeResult | None:
    """The pool's verdict on `item` when string work decides it (see the module docstring),
    else None: `grade_answer`'s first steps (extraction, then `fast_match`), without sympy."""
    too_long = max(len(item.response), len(item.ground_truth)) > TRIVIAL_MAX_CHARS
    if too_long or item.data_source in GRADING_RULES:  # another rule than grade_answer's
        return None
    try:
        extracted = _extract_cached(item.response)
        if extracted is None:
            return GradeResult(id=item.id, score=0.0, reason=Reason.NO_ANSWER, extracted=None)
        same = _fast_match_cached(extracted, item.ground_truth)
    except Exception:  # the pool turns the failure into a verdict
        return None
    if same is None:
        return None
    reason = Reason.CORRECT if same else Reason.WRONG
    return GradeResult(id=item.id, score=float(same), reason=reason, extracted=extracted)


# Models repeat whole responses and answers, and a prompt's samples share its ground truth; the
# strings are short (TRIVIAL_MAX_CHARS), so the caches stay small.
@lru_cache(maxsize=8192)
def _extract_cached(response: str) -> str | None:
    return extract_answer(response)


@lru_cache(maxsize=8192)
def _fast_match_cached(extracted: str, ground_truth: str) -> bool | None:
    return fast_match(extracted, ground_truth)


def with_fast_path(
    items: Sequence[GradeRequestItem],
    grade_rest: Callable[[Sequence[GradeRequestItem]], list[GradeResult]],
) -> list[GradeResult]:
    """Results in item order: trivial items graded here, the others by `grade_rest` (if any)."""
    results = [grade_trivially(item) for item in items]
    rest = [item for item, result in zip(items, results, strict=True) if result is None]
    graded = iter(grade_rest(rest) if rest else [])
    return [result if result is not None else next(graded) for result in results]


def request_timeout_s(
    items: int, item_timeout_s: float, server_workers: int = 1, base_s: float = 30.0
) -> float:
    """How long one request of ``items`` may take: ``base_s + ceil(items / workers) * deadline``.

    The service kills any item at ``item_timeout_s``, so a request whose every item hits the
    deadline still answers within this; ``base_s`` covers JSON, queueing and worker restarts.
    """
    return base_s + math.ceil(items / server_workers) * item_timeout_s


class HttpGraderClient:
    """Client of a math-grader service (``POST /v1/grade``); see the module docstring."""

    def __init__(
        self,
        base_url: str,
        item_timeout_s: float = 10.0,
        *,
        server_workers: int = 1,
        base_timeout_s: float = 30.0,
        max_batch: int = 128,
        concurrency: int = 8,
        retry_budget_s: float = 60.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        max_body_bytes: int = 32 * 2**20,
        transport: httpx.BaseTransport | None = None,
        fast_path: bool = True,
    ) -> None:
        """``item_timeout_s`` is the service's per-item deadline (``GRADER_ITEM_TIMEOUT_S``).

        ``server_workers`` is the grading processes one request can count on: 1 (the default)
        is safe when several requests share a pod. ``max_batch`` items (and, unless one item
        alone is larger, ``max_body_bytes`` of JSON) per request, below the service's limits
        (4096 items, 64 MiB); ``concurrency`` requests in flight at once. ``fast_path``: grade
        trivial items here (``grade_trivially``), send only the rest.
        """
        _check_settings(
            positive={
                "item_timeout_s": item_timeout_s,
                "server_workers": server_workers,
                "max_batch": max_batch,
                "concurrency": concurrency,
                "max_body_bytes": max_body_bytes,
            },
            non_negative={
                "base_timeout_s": base_timeout_s,
                "retry_budget_s": retry_budget_s,
                "backoff_s": backoff_s,
                "max_backoff_s": max_backoff_s,
            },
        )
        self.item_timeout_s, self.server_workers = item_timeout_s, server_workers
        self.base_timeout_s, self.retry_budget_s = base_timeout_s, retry_budget_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_batch, self.max_body_bytes = max_batch, max_body_bytes
        self.concurrency, self.fast_path = concurrency, fast_path
        # No idle connections are kept: every request connects anew, so kube-proxy spreads the
        # requests of one step over all grader pods and a replaced pod is never reused.
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),
            transport=transport,
        )
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="grader-client")

    def __enter__(self) -> HttpGraderClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def grade(self, items: Sequence[GradeRequestItem]) -> list[GradeResult]:
        if self.fast_path:
            return with_fast_path(items, self._grade_remote)
        return self._grade_remote(items)

    def _grade_remote(self, items: Sequence[GradeRequestItem]) -> list[GradeResult]:
        # ensure_ascii: a lone surrogate in a response must not make the body unencodable.
        encoded = [json.dumps(item.model_dump(), ensure_ascii=True) for item in items]
        parts = split_batches([len(e) for e in encoded], self.max_batch, self.max_body_bytes)
        futures = [
            self._threads.submit(
                self._grade_request,
                ('{"items":[' + ",".join(encoded[i] for i in part) + "]}").encode("ascii"),
                [items[i].id for i in part],
            )
            for part in parts
        ]
        try:
            return [result for future in futures for result in future.result()]
        finally:
            for future in futures:  # after a failure, requests not yet sent are not sent
                future.cancel()

    def _grade_request(self, body: bytes, ids: list[str]) -> list[GradeResult]:
        response = self._post(body, len(ids))
        results = GradeResponse.model_validate_json(response.content).results
        if [r.id for r in results] != ids:
            raise GraderError("grader answered with results that do not match the request ids")
        return results

    def _post(self, body: bytes, items: int) -> httpx.Response:
        read_s = request_timeout_s(
            items, self.item_timeout_s, self.server_workers, self.base_timeout_s
        )
        timeout = httpx.Timeout(read_s, connect=_CONNECT_TIMEOUT_S, write=_WRITE_TIMEOUT_S)
        give_up_at: float | None = None  # the budget starts at the first failure
        for attempt in itertools.count(1):
            outcome = self._attempt(body, timeout)
            if isinstance(outcome, httpx.Response):
                return outcome
            now = time.monotonic()
            give_up_at = now + self.retry_budget_s if give_up_at is None else give_up_at
            delay = self._backoff(attempt)
            if now + delay > give_up_at:
                raise GraderError(
                    f"grader still failing after {attempt} attempts "
                    f"(retry_budget_s={self.retry_budget_s:g}): {outcome}"
                )
            log.warning("grader request failed (%s); retry %d in %.2fs", outcome, attempt, delay)
            time.sleep(delay)
        raise AssertionError("itertools.count() ended")

    def _attempt(self, body: bytes, timeout: httpx.Timeout) -> httpx.Response | str:
        """The 200 answer, or what went wrong if retrying may help; else ``GraderError``."""
        # "connection: close": the server ends the connection too, so none is ever reused.
        headers = {"content-type": "application/json", "connection": "close"}
        try:
            response = self._http.post("/v1/grade", content=body, headers=headers, timeout=timeout)
        except _RETRYABLE as error:
            return repr(error)
        except httpx.HTTPError as error:  # a read timeout past the worst-case bound: hung
            raise GraderError(
                f"grader request failed after {timeout.read:.0f}s: {type(error).__name__}: {error}"
            ) from error
        if response.status_code >= 500:
            return _describe(response)
        if response.status_code != 200:
            raise GraderError(f"grader refused the batch: {_describe(response)}")
        return response

    def _backoff(self, attempt: int) -> float:
        """Exponential from ``backoff_s``, capped at ``max_backoff_s``, with jitter."""
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt - 1, 30))
        return delay * random.uniform(0.5, 1.0)


def _check_settings(positive: dict[str, float], non_negative: dict[str, float]) -> None:
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"HttpGraderClient {name} must be > 0, got {value}")
    for name, value in non_negative.items():
        if not value >= 0:
            raise ValueError(f"HttpGraderClient {name} must be >= 0, got {value}")


def split_batches(sizes: Sequence[int], max_items: int, max_bytes: int) -> list[range]:
    """Consecutive ranges of items, each within both limits (a lone oversized item goes alone)."""
    ranges, start = [], 0
    while start < len(sizes):
        end, total = start + 1, sizes[start]
        while end < len(sizes) and end - start < max_items and total + sizes[end] + 1 <= max_bytes:
            total += sizes[end] + 1  # and a comma
            end += 1
        ranges.append(range(start, end))
        start = end
    return ranges


def _describe(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.text[:500]}"


class LocalGrader:
    """In-process fallback: the service's worker pool, without HTTP.

    ``timeout_s`` is the per-item deadline. Workers are started with ``forkserver``; as with any
    non-fork multiprocessing, a script that creates one must guard its entry point with
    ``if __name__ == "__main__":``.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        max_response_chars: int = 32768,
        fast_path: bool = True,
    ) -> None:
        self.fast_path = fast_path
        self._pool = GradingPool(
            workers=workers, item_timeout_s=timeout_s, max_response_chars=max_response_chars
        ).start()

    def __enter__(self) -> LocalGrader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def grade(self, items: Sequence[GradeRequestItem]) -> list[GradeResult]:
        if self.fast_path:
            return with_fast_path(items, self._grade_in_pool)
        return self._grade_in_pool(items)

    def _grade_in_pool(self, items: Sequence[GradeRequestItem]) -> list[GradeResult]:
        graded = self._pool.grade([(i.response, i.ground_truth, i.data_source) for i in items])
        return [
            GradeResult(id=item.id, **result.verdict._asdict())
            for item, result in zip(items, graded, strict=True)
        ]


def make_grader(url: str | None, timeout_s: float) -> HttpGraderClient | LocalGrader:
    """The trainer's grader: HTTP when ``url`` (``DISTILL_GRADER_URL``) is set, else local.

    ``timeout_s`` is the per-item deadline (DistillJob ``spec.grader.timeoutSeconds``); the
    service enforces its own copy of it, and the HTTP client scales each request's timeout with
    its size from it (see ``request_timeout_s``).
    """
    if url:
        return HttpGraderClient(url, item_timeout_s=timeout_s)
    return LocalGrader(timeout_s=timeout_s)
