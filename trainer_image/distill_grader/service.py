"""The math-grader HTTP service (FastAPI), run by ``python -m distill_grader --port 8000``.

Endpoints:

- ``POST /v1/grade``: body ``{"items": [{"id", "response", "ground_truth", "data_source"}, ...]}``
  (``data_source`` optional, default ``math``), answer
  ``{"results": [{"id", "score", "reason", "extracted"}, ...]}`` in request order. A batch over
  ``max_batch`` items or a malformed body gets 422 naming the field (``loc``); a body over
  ``max_body_bytes`` gets 413; an over-long response is not an error but the reason ``too_long``.
  Invalid UTF-8 in the body is replaced by U+FFFD and graded like any text.
  Concurrent requests share the workers fairly, and a request still unfinished after
  ``request_timeout_s`` gets ``timeout`` for its remaining items (see ``distill_grader.pool``).
- ``GET /healthz`` (200 while the server and its pool dispatcher run), ``GET /readyz`` (200 while
  the pool takes work and has a worker up; a worker being replaced does not make it unready),
  ``GET /metrics`` (Prometheus), ``GET /openapi.json``, and ``GET /docs``.

On SIGTERM uvicorn stops accepting connections and lets in-flight batches finish (up to
``graceful_timeout_s``) before the worker pool is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from distill_grader.config import GraderSettings
from distill_grader.metrics import GraderMetrics
from distill_grader.pool import GradingPool, PoolClosedError
from distill_grader.schema import GradeRequest, GradeResponse, GradeResult

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "Request body larger than max_body_bytes."},
    422: {"description": "Malformed JSON, a bad field (named in loc) or too many items."},
    503: {"description": "The grader is shutting down."},
}


class _CappedRequest(Request):
    """A request whose body is read with a size cap and made valid UTF-8."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit: int = self.app.state.settings.max_body_bytes
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(limit)
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            self._body = _valid_utf8(b"".join(chunks))
        return self._body


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body is larger than {limit} bytes (max_body_bytes)")


def _valid_utf8(body: bytes) -> bytes:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("utf-8", "replace").encode("utf-8")
    return body


class _MeteredRoute(APIRoute):
    """Counts every outcome of the route (including 413/422 raised before the endpoint runs)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def metered(request: Request) -> Response:
            metrics: GraderMetrics = request.app.state.metrics
            status, start = 500, time.perf_counter()
            with metrics.inflight.labels(metrics.job_name).track_inprogress():
                try:
                    response = await handler(_CappedRequest(request.scope, request.receive))
                    status = response.status_code
                    return response
                except HTTPException as error:
                    status = error.status_code
                    raise
                except RequestValidationError:
                    status = 422
                    raise
                finally:
                    metrics.count_request(status, time.perf_counter() - start)

        return metered


grade_router = APIRouter(route_class=_MeteredRoute)  # only /v1/grade is metered
probe_router = APIRouter()


@grade_router.post(
    "/v1/grade",
    response_model=GradeResponse,
    responses=_ERROR_RESPONSES,
    summary="Grade a batch of responses against their ground truths",
)
async def grade(body: GradeRequest, request: Request) -> GradeResponse:
    """Score each item 1.0 (reason ``correct``) or 0.0 (``wrong``, ``no_answer``, ``timeout``,
    ``parse_error``, ``too_long``). Results are in request order."""
    settings: GraderSettings = request.app.state.settings
    if len(body.items) > settings.max_batch:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body", "items"),
                    "msg": f"at most {settings.max_batch} items per request, got "
                    f"{len(body.items)}; split the batch",
                }
            ]
        )
    pool: GradingPool = request.app.state.pool
    try:
        items = [(item.response, item.ground_truth, item.data_source) for item in body.items]
        graded = await asyncio.wrap_future(pool.submit(items))
    except PoolClosedError as error:
        raise HTTPException(503, "the grader is shutting down") from error
    request.app.state.metrics.count_batch(graded, (item.data_source for item in body.items))
    return GradeResponse(
        results=[
            GradeResult(id=item.id, **result.verdict._asdict())
            for item, result in zip(body.items, graded, strict=True)
        ]
    )


@probe_router.get("/healthz", summary="Liveness: the server and its pool dispatcher run")
async def healthz(request: Request) -> JSONResponse:
    pool: GradingPool | None = getattr(request.app.state, "pool", None)
    if pool is None or pool.alive:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "grading pool stopped"}, status_code=503)


@probe_router.get("/readyz", summary="Readiness: the pool takes work", responses={503: {}})
async def readyz(request: Request) -> JSONResponse:
    pool: GradingPool | None = getattr(request.app.state, "pool", None)
    if pool is not None and pool.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503)


@probe_router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    """422 with each problem's location and message, without echoing the (maybe huge) input."""
    assert isinstance(error, RequestValidationError)
    detail = []
    for problem in error.errors():
        message = problem["msg"]
        if problem.get("type") == "json_invalid":
            message = f"{message}: {problem.get('ctx', {}).get('error', '')}"
        detail.append({"loc": list(problem["loc"]), "msg": message, "type": problem["type"]})
    return JSONResponse({"detail": detail}, status_code=422)


def create_app(settings: GraderSettings | None = None) -> FastAPI:
    """A grader app with its own worker pool (started by the lifespan) and metrics registry."""
    settings = settings or GraderSettings()
    metrics = GraderMetrics(settings.job_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = GradingPool(
            workers=settings.workers,
            item_timeout_s=settings.item_timeout_s,
            max_response_chars=settings.max_response_chars,
            on_restart=metrics.count_restart,
            request_timeout_s=settings.request_timeout_s,
        )
        app.state.pool = pool.start()
        try:
            yield
        finally:
            await asyncio.to_thread(pool.close, settings.graceful_timeout_s)

    app = FastAPI(
        title="distill-operator math grader",
        version="v1",
        description=__doc__,
        lifespan=lifespan,
        exception_handlers={RequestValidationError: _validation_error},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(grade_router)
    app.include_router(probe_router)
    return app
