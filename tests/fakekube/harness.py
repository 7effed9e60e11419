"""`FakeKube`: the fake API server running in a background thread, plus assertion helpers.

    with FakeKube(crds=[Path("crds/distilljobs.distill.dev.yaml")]) as kube:
        client = kubernetes.client.CustomObjectsApi(kube.api_client())
        ...
        kube.wait_for(lambda: kube.get("ray.io", "v1", "rayjobs", "default", "job"))

The server listens on 127.0.0.1 on a free port with its own event loop; `kube.kubeconfig` is a
kubeconfig file for it (also usable by kopf and kubectl via KUBECONFIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from aiohttp import web

from fakekube.errors import ApiError
from fakekube.kubeconfig import write_kubeconfig
from fakekube.resources import Registry
from fakekube.selectors import label_matcher
from fakekube.server import FakeApiServer, RequestRecord
from fakekube.store import DEFAULT_NAMESPACES, Store

CrdSource = str | Path | dict[str, Any]


@lru_cache(maxsize=16)
def _parse_yaml(path: str, mtime: float) -> tuple[dict[str, Any], ...]:
    with open(path) as handle:
        return tuple(doc for doc in yaml.load_all(handle, Loader=yaml.CSafeLoader) if doc)


def _crd_docs(source: CrdSource) -> list[dict[str, Any]]:
    """The CRD documents, shared with the parse cache: callers must not modify them."""
    if isinstance(source, dict):
        return [source]
    docs = _parse_yaml(str(source), Path(source).stat().st_mtime)
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


def load_crds(source: CrdSource) -> list[dict[str, Any]]:
    """The CustomResourceDefinition documents in a YAML file (or a CRD dict itself)."""
    return copy.deepcopy(_crd_docs(source))


class FakeKube:
    """An in-process Kubernetes API server for tests; see the module docstring."""

    def __init__(self, crds: Iterable[CrdSource] = (), namespace: str = "default") -> None:
        self._crds = list(crds)
        self._namespace = namespace
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fakekube", daemon=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="fakekube-"))
        self._runner: web.AppRunner | None = None
        self.store = Store(Registry.with_builtins(), schedule=self._loop.call_soon_threadsafe)
        self.server: FakeApiServer | None = None
        self.url = ""
        self.kubeconfig = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeKube:
        namespaces = self.store.registry.find("", "v1", "namespaces")
        if self._namespace not in DEFAULT_NAMESPACES:
            self.store.create(namespaces, None, {"metadata": {"name": self._namespace}})
        crd_res = self.store.registry.find(
            "apiextensions.k8s.io", "v1", "customresourcedefinitions"
        )
        for source in self._crds:
            for crd in _crd_docs(source):
                self.store.create(crd_res, None, crd)  # stores its own copy
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        self.url = f"http://127.0.0.1:{port}"
        self.kubeconfig = str(write_kubeconfig(self._tmp / "kubeconfig", self.url, self._namespace))
        return self

    async def _serve(self) -> int:
        self.server = FakeApiServer(self.store)
        self._runner = web.AppRunner(self.server.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.server.address = f"127.0.0.1:{port}"
        return port

    async def _shutdown(self) -> None:
        if self.server is not None:
            self.server.stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- clients and assertions -----------------------------------------------------------------
    def api_client(self) -> kubernetes.client.ApiClient:
        """A kubernetes ApiClient for this server (close it, or use it as a context manager)."""
        return kubernetes.config.new_client_from_config(config_file=self.kubeconfig)

    @contextlib.contextmanager
    def as_default_kubeconfig(self) -> Iterator[FakeKube]:
        """Make this the default cluster of kopf and of `kubernetes.config.load_kube_config()`.

        The kubernetes library reads $KUBECONFIG once, at import; kopf's default login goes through
        it, so both the variable and the library's default location are pointed here, then restored.
        """
        kube_config = kubernetes.config.kube_config
        saved = (os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION)
        os.environ["KUBECONFIG"] = kube_config.KUBE_CONFIG_DEFAULT_LOCATION = self.kubeconfig
        try:
            yield self
        finally:
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved[1]
            if saved[0] is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = saved[0]

    @property
    def requests(self) -> list[RequestRecord]:
        return list(self.server.records) if self.server else []

    def clear_requests(self) -> None:
        """Forget the requests so far (e.g. the test's own setup calls)."""
        if self.server is not None:
            self.server.records.clear()

    def _resource(self, group: str, version: str, plural: str) -> Any:
        res = self.store.registry.find(group, version, plural)
        if res is None:
            raise KeyError(f"fakekube serves no resource {plural} in {group or 'core'}/{version}")
        return res

    def get(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict | None:
        try:
            return self.store.get(self._resource(group, version, plural), namespace, name)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict]:
        res = self._resource(group, version, plural)
        return self.store.list(res, namespace, label_matcher(label_selector))[0]

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
    ) -> Any:
        """Poll `predicate` until it returns something truthy (returned); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            seen = predicate()
            if seen:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"condition not met within {timeout}s: last result {seen!r}; "
                    f"objects: {self.summary()}"
                )
            time.sleep(interval)

    def summary(self) -> str:
        """A one-line inventory of non-default objects, to say what was seen when a wait fails."""
        seen: dict[str, list[str]] = {}
        for res, obj in self.store.objects():
            if res.plural not in ("namespaces", "customresourcedefinitions"):
                md = obj["metadata"]
                name = f"{md['namespace']}/{md['name']}" if "namespace" in md else md["name"]
                seen.setdefault(f"{res.plural}.{res.group or 'core'}", []).append(name)
        return (
            "; ".join(f"{kind}: {', '.join(sorted(names))}" for kind, names in sorted(seen.items()))
            or "(none)"
        )
