"""Watch streams: newline-delimited JSON `{"type", "object"}` events over a chunked response.

As the real server: without a resourceVersion (or "0", or with `sendInitialEvents=true`) the stream
starts with the current objects as ADDED events (then, for `sendInitialEvents`, a BOOKMARK
annotated `k8s.io/initial-events-end`); a resourceVersion older than the kept history answers an
ERROR event carrying a 410 Expired Status. Periodic bookmarks are not sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fakekube import errors, tables
from fakekube.resources import Resource
from fakekube.selectors import Matcher
from fakekube.watch import Event, Watcher, visible

if TYPE_CHECKING:
    from fakekube.server import FakeApiServer, Target

DEFAULT_TIMEOUT_S = 1800.0


def _start(
    server: FakeApiServer, target: Target, match: Matcher, rv_text: str | None, initial: bool
) -> Any:
    """Backlog and subscription taken together under the store lock, so nothing slips between.

    `match` sees objects as the watched resource presents them (events.k8s.io vs core/v1).
    """
    store = server.store
    key = store.storage_key(target.resource)
    with store.lock:
        if initial or rv_text in (None, "", "0"):
            items, _ = store.list(target.resource, target.namespace, match)
            backlog: list[tuple[str, dict[str, Any]]] = [("ADDED", obj) for obj in items]
        else:
            try:
                since = int(rv_text)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resource version: {rv_text!r}") from exc
            backlog = [
                seen
                for event in store.hub.since(key, since)
                if (seen := visible(event, target.namespace, match)) is not None
            ]
        watcher = store.hub.subscribe(key, asyncio.get_running_loop())
    return backlog, watcher


async def stream_watch(
    server: FakeApiServer, request: web.Request, target: Target, match: Matcher
) -> web.StreamResponse:
    """Serve `?watch=true` until timeoutSeconds, the client leaving, or the server stopping."""
    store, resource = server.store, target.resource

    def presented_match(obj: dict[str, Any]) -> bool:
        return match(store.present(resource, obj))

    query = request.query
    initial = query.get("sendInitialEvents") == "true"
    try:
        backlog, watcher = _start(
            server, target, presented_match, query.get("resourceVersion"), initial
        )
    except errors.ApiError as exc:
        if exc.code != 410:
            raise
        return await _error_event(request, exc)
    as_table = tables.wants_table(request.headers.get("Accept", ""))
    timeout = float(request.query.get("timeoutSeconds") or DEFAULT_TIMEOUT_S)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)

    async def send(kind: str, obj: dict[str, Any]) -> None:
        obj = store.present(resource, obj)
        if as_table:
            obj = tables.table(resource, [obj], obj["metadata"]["resourceVersion"])
        await _write(response, kind, obj)

    try:
        for kind, obj in backlog:
            await send(kind, obj)
        if initial and query.get("allowWatchBookmarks") == "true":
            rv = store.resource_version
            await _write(response, "BOOKMARK", _initial_events_end(resource, rv))
        async for event in _follow(watcher, server.stopping, timeout):
            if (seen := visible(event, target.namespace, presented_match)) is not None:
                await send(*seen)
    except ConnectionResetError:
        pass  # the client went away: nothing left to do
    finally:
        store.hub.unsubscribe(watcher)
    return response


async def _follow(
    watcher: Watcher, stopping: asyncio.Event, timeout: float
) -> AsyncIterator[Event]:
    """The watcher's events until `timeout` seconds have passed or the server stops."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        while (remaining := deadline - loop.time()) > 0:
            getter = asyncio.ensure_future(watcher.queue.get())
            done, _ = await asyncio.wait(
                {getter, stopped}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                return
            yield getter.result()
    finally:
        stopped.cancel()


async def _write(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def _initial_events_end(resource: Resource, rv: int) -> dict[str, Any]:
    annotations = {"k8s.io/initial-events-end": "true"}
    metadata = {"resourceVersion": str(rv), "annotations": annotations}
    return {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata}


async def _error_event(request: web.Request, exc: errors.ApiError) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await _write(response, "ERROR", exc.status())
    return response
