"""How the trainer grades rollouts: over HTTP, or in-process when no grader URL is set.

    grader = make_grader(os.environ.get(GRADER_URL_ENV), timeout_s=spec.grader.timeout_seconds)
    results = grader.grade([GradeRequestItem(id="0", response="... \\boxed{4}", ground_truth="4")])

``HttpGraderClient`` POSTs batches (split by count and bytes) to ``{base_url}/v1/grade`` over one
pooled ``httpx.Client`` and retries, with exponential backoff and jitter, on connection errors and
5xx answers; a 4xx answer or a read timeout (the server may still be grading) raises
``GraderError`` at once. ``LocalGrader`` runs the same process pool as the service inside the
caller's process. Both are context managers.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import httpx

from distill_grader.pool import GradingPool
from distill_grader.schema import GradeRequestItem, GradeResponse, GradeResult

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


class GraderError(RuntimeError):
    """The grader could not grade a batch (after retries, where retrying made sense)."""


@runtime_checkable
class Grader(Protocol):
    """Anything that grades a batch; results are in item order."""

    def grade(self, items: Sequence[GradeRequestItem]) -> list[GradeResult]: ...


class HttpGraderClient:
    """Client of a math-grader service (``POST /v1/grade``)."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_batch: int = 4096,
        max_body_bytes: int = 32 * 2**20,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``timeout_s`` bounds one request; ``retries`` are extra attempts after the first.

        Requests carry at most ``max_batch`` items and (unless one item alone is larger)
        ``max_body_bytes`` of JSON, below the service's limits (4096 items, 64 MiB).
        """
        if min(retries, backoff_s) < 0 or min(max_batch, max_body_bytes, timeout_s) <= 0:
            raise ValueError(
                "need timeout_s, max_batch, max_body_bytes > 0; retries, backoff_s >= 0"
            )
        self.retries, self.backoff_s = retries, backoff_s
        self.max_batch, self.max_body_bytes = max_batch, max_body_bytes
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            transport=transport,
        )

    def __enter__(self) -> HttpGraderClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def grade(self, items: Sequence[GradeRequestItem]) -> list[GradeResult]:
        # ensure_ascii: a lone surrogate in a response must not make the body unencodable.
        encoded = [json.dumps(item.model_dump(), ensure_ascii=True) for item in items]
        results: list[GradeResult] = []
        for part in split_batches([len(e) for e in encoded], self.max_batch, self.max_body_bytes):
            body = '{"items":[' + ",".join(encoded[i] for i in part) + "]}"
            results += self._grade_request(body.encode("ascii"), [items[i].id for i in part])
        return results

    def _grade_request(self, body: bytes, ids: list[str]) -> list[GradeResult]:
        response = self._post(body)
        results = GradeResponse.model_validate_json(response.content).results
        if [r.id for r in results] != ids:
            raise GraderError("grader answered with results that do not match the request ids")
        return results

    def _post(self, body: bytes) -> httpx.Response:
        headers = {"content-type": "application/json"}
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                log.warning(
                    "grader request failed (%s); retry %d in %.2fs", problem, attempt, delay
                )
                time.sleep(delay)
            try:
                response = self._http.post("/v1/grade", content=body, headers=headers)
            except _RETRYABLE as error:
                problem = repr(error)
                continue
            except httpx.HTTPError as error:  # a read timeout: the server may still be grading
                raise GraderError(
                    f"grader request failed: {type(error).__name__}: {error}"
                ) from error
            if response.status_code >= 500:
                problem = _describe(response)
                continue
            if response.status_code != 200:
                raise GraderError(f"grader refused the batch: {_describe(response)}")
            return response
        raise GraderError(f"grader failed after {self.retries + 1} attempts: {problem}")


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
        self, workers: int = 2, timeout_s: float = 10.0, max_response_chars: int = 32768
    ) -> None:
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
        graded = self._pool.grade([(item.response, item.ground_truth) for item in items])
        return [
            GradeResult(id=item.id, **result.verdict._asdict())
            for item, result in zip(items, graded, strict=True)
        ]


def make_grader(url: str | None, timeout_s: float) -> HttpGraderClient | LocalGrader:
    """The trainer's grader: HTTP when ``url`` (``DISTILL_GRADER_URL``) is set, else local.

    ``timeout_s`` is the per-item deadline (DistillJob ``spec.grader.timeoutSeconds``); the
    service enforces its own copy of it, so the HTTP client allows a whole batch
    ``60 s + 6 * timeout_s`` (a few items of a batch may each run into the deadline).
    """
    if url:
        return HttpGraderClient(url, timeout_s=60.0 + 6 * timeout_s)
    return LocalGrader(timeout_s=timeout_s)
