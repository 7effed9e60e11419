"""The aiohttp application: routing, discovery endpoints and the resource verbs.

URLs follow the real API server: `/api/v1/...` for the core group and `/apis/<group>/<version>/...`
for the rest, each with `[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]`. Every resource
request is recorded as a `RequestRecord` with its RBAC verb before it is served.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fakekube import discovery, errors, tables
from fakekube.errors import ApiError
from fakekube.resources import Resource
from fakekube.selectors import Matcher, field_matcher, label_matcher
from fakekube.store import Store
from fakekube.streaming import stream_watch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestRecord:
    """One resource request: the RBAC verb and what it touched (None where not applicable)."""

    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    label_selector: str | None = None

    @property
    def rbac_resource(self) -> str:
        """The resource as an RBAC rule names it: `plural` or `plural/subresource`."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True)
class Target:
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


@web.middleware
async def _status_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _json(exc.status(), exc.code)
    except web.HTTPNotFound:
        return _json(errors.no_such_resource().status(), 404)
    except web.HTTPMethodNotAllowed:
        message = (
            f"the server does not allow this method on the requested resource ({request.method})"
        )
        return _json(errors.method_not_allowed(message).status(), 405)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("fakekube: internal error serving %s %s", request.method, request.path)
        return _json(ApiError(500, "InternalError", f"fakekube: {exc!r}").status(), 500)


def _rbac_verb(method: str, target: Target, query: Any) -> str:
    if method == "GET":
        if query.get("watch", "").lower() in ("1", "t", "true"):  # Go's strconv.ParseBool
            return "watch"
        return "get" if target.name else "list"
    if method == "DELETE":
        return "delete" if target.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


class FakeApiServer:
    """Routes HTTP requests onto a `Store`; `records` collects what was asked, in order."""

    def __init__(self, store: Store, address: str = "127.0.0.1") -> None:
        self.store = store
        self.address = address
        self.records: list[RequestRecord] = []
        self.stopping = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_status_errors], client_max_size=64 * 1024**2)
        get = self._discovery
        app.router.add_get("/version", lambda r: get(lambda: discovery.VERSION))
        app.router.add_get("/api", lambda r: get(lambda: discovery.api_versions(self.address)))
        app.router.add_get("/apis", lambda r: get(lambda: discovery.api_group_list(self.registry)))
        for path in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(path, lambda r: web.Response(text="ok"))
        app.router.add_get("/openapi/v2", lambda r: get(lambda: None))
        app.router.add_get(
            "/openapi/v3", lambda r: get(lambda: discovery.openapi_root(self.registry))
        )
        app.router.add_get("/openapi/v3/api/{version}", self._openapi)
        app.router.add_get("/openapi/v3/apis/{group}/{version}", self._openapi)
        app.router.add_get("/api/{version}", self._resource_list)
        app.router.add_get("/apis/{group}", self._group)
        app.router.add_get("/apis/{group}/{version}", self._resource_list)
        app.router.add_route("*", "/api/{version}/{tail:.+}", self._serve)
        app.router.add_route("*", "/apis/{group}/{version}/{tail:.+}", self._serve)
        return app

    @property
    def registry(self) -> Any:
        return self.store.registry

    async def _discovery(self, build: Any) -> web.Response:
        with self.store.lock:
            body = build()
        if body is None:
            raise errors.no_such_resource()
        return _json(body)

    async def _group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        return await self._discovery(
            lambda: (
                discovery.api_group(self.registry, group)
                if group in self.registry.group_versions()
                else None
            )
        )

    async def _resource_list(self, request: web.Request) -> web.Response:
        group, version = request.match_info.get("group", ""), request.match_info["version"]
        return await self._discovery(lambda: discovery.resource_list(self.registry, group, version))

    async def _openapi(self, request: web.Request) -> web.Response:
        group, version = request.match_info.get("group", ""), request.match_info["version"]
        return await self._discovery(
            lambda: discovery.openapi_group_version(self.registry, group, version)
        )

    def _target(self, group: str, version: str, tail: str) -> Target:
        parts = tail.strip("/").split("/")
        namespace = None
        if parts[0] == "namespaces" and len(parts) >= 3:
            nested = self.registry.find(group, version, parts[2])
            if nested is not None and nested.namespaced:
                namespace, parts = parts[1], parts[2:]
        resource = self.registry.find(group, version, parts[0])
        if resource is None or len(parts) > 3 or (namespace and not resource.namespaced):
            raise errors.no_such_resource()
        name = parts[1] if len(parts) > 1 else None
        subresource = parts[2] if len(parts) > 2 else None
        if subresource is not None and (subresource != "status" or not resource.status_subresource):
            raise errors.no_such_resource()
        return Target(resource, namespace, name, subresource)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        target = self._target(info.get("group", ""), info["version"], info["tail"])
        verb = _rbac_verb(request.method, target, request.query)
        res = target.resource
        self.records.append(
            RequestRecord(
                verb,
                res.group,
                res.plural,
                target.subresource,
                target.namespace,
                target.name,
                request.query.get("labelSelector"),
            )
        )
        if request.query.get("dryRun"):
            raise errors.bad_request("fakekube does not support dryRun")
        handler = getattr(self, f"_{verb}", None)
        if handler is None:
            raise errors.method_not_allowed(
                f"the server does not allow this method on the "
                f"requested resource ({request.method})"
            )
        return await handler(request, target)

    # -- verbs -------------------------------------------------------------------------------
    def _matcher(self, request: web.Request, target: Target) -> Matcher:
        labels = label_matcher(request.query.get("labelSelector"))
        fields = field_matcher(request.query.get("fieldSelector"), target.resource.field_selectors)
        name = target.name
        return lambda obj: labels(obj) and fields(obj) and name in (None, obj["metadata"]["name"])

    def _render(
        self, request: web.Request, target: Target, obj: dict[str, Any], status: int = 200
    ) -> web.Response:
        if tables.wants_table(request.headers.get("Accept", "")):
            include = request.query.get("includeObject", "Metadata")
            rv = obj["metadata"]["resourceVersion"]
            return _json(tables.table(target.resource, [obj], rv, include), status)
        return _json(obj, status)

    async def _get(self, request: web.Request, target: Target) -> web.Response:
        obj = self.store.get(target.resource, target.namespace, target.name or "")
        return self._render(request, target, obj)

    async def _list(self, request: web.Request, target: Target) -> web.Response:
        res = target.resource
        items, rv = self.store.list(res, target.namespace, self._matcher(request, target))
        if tables.wants_table(request.headers.get("Accept", "")):
            include = request.query.get("includeObject", "Metadata")
            return _json(tables.table(res, items, str(rv), include))
        kind = f"{res.kind}List"
        return _json(
            {
                "kind": kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
        )

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except json.JSONDecodeError as exc:
            raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc

    async def _create(self, request: web.Request, target: Target) -> web.Response:
        if target.name:
            raise errors.method_not_allowed("POST is only allowed on collections")
        if target.resource.namespaced and target.namespace is None:
            raise errors.method_not_allowed("namespaced objects are created in /namespaces/<ns>/")
        obj = self.store.create(
            target.resource,
            target.namespace,
            await self._body(request),
            request.query.get("fieldValidation"),
        )
        return self._render(request, target, obj, 201)

    async def _update(self, request: web.Request, target: Target) -> web.Response:
        obj = self.store.replace(
            target.resource,
            target.namespace,
            target.name or "",
            await self._body(request),
            target.subresource,
            request.query.get("fieldValidation"),
        )
        return self._render(request, target, obj)

    async def _patch(self, request: web.Request, target: Target) -> web.Response:
        obj = self.store.patch(
            target.resource,
            target.namespace,
            target.name or "",
            await self._body(request),
            request.headers.get("Content-Type", ""),
            target.subresource,
            request.query.get("fieldValidation"),
        )
        return self._render(request, target, obj)

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options = await self._body(request) if request.can_read_body else {}
        options = options if isinstance(options, dict) else {}
        if "propagationPolicy" in request.query:
            options["propagationPolicy"] = request.query["propagationPolicy"]
        return options

    async def _delete(self, request: web.Request, target: Target) -> web.Response:
        options = await self._delete_options(request)
        obj = self.store.delete(target.resource, target.namespace, target.name or "", options)
        return _json(obj)

    async def _deletecollection(self, request: web.Request, target: Target) -> web.Response:
        options = await self._delete_options(request)
        res = target.resource
        items = self.store.delete_collection(
            res, target.namespace, self._matcher(request, target), options
        )
        return _json(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        return await stream_watch(self, request, target, self._matcher(request, target))
