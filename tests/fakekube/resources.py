"""The API resources the fake server knows: built-in kinds plus those registered from CRDs.

A `Resource` carries what discovery, routing, validation and table printing need. Custom resources
are stored per (group, plural) whatever the served version: no conversion webhooks here, every
served version sees the same object with its own `apiVersion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
BASE_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
EVENT_FIELDS = (
    BASE_FIELDS
    | {
        f"involvedObject.{key}"
        for key in (
            "kind",
            "namespace",
            "name",
            "uid",
            "apiVersion",
            "resourceVersion",
            "fieldPath",
        )
    }
    | {"reason", "reportingComponent", "source", "type"}
)
EVENTS_V1_FIELDS = (
    BASE_FIELDS
    | {f"regarding.{key}" for key in ("kind", "namespace", "name", "uid", "apiVersion")}
    | {"reason", "reportingController", "type"}
)
POD_FIELDS = BASE_FIELDS | {
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
}


@dataclass(frozen=True, eq=False)
class Resource:
    """One served (group, version, plural) with the facts discovery reports about it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    tracks_generation: bool = False
    custom: bool = False
    schema: dict[str, Any] | None = None
    printer_columns: tuple[dict[str, Any], ...] = ()
    field_selectors: frozenset[str] = BASE_FIELDS

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """`plural.group` as the real server names a resource in its error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


def _builtin(group: str, version: str, plural: str, kind: str, **kwargs: Any) -> Resource:
    singular = kwargs.pop("singular", kind.lower())
    return Resource(group, version, plural, kind, singular=singular, **kwargs)


BUILTINS: tuple[Resource, ...] = (
    _builtin(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        short_names=("ns",),
        status_subresource=True,
    ),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _builtin("", "v1", "secrets", "Secret", field_selectors=BASE_FIELDS | {"type"}),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _builtin(
        "",
        "v1",
        "services",
        "Service",
        short_names=("svc",),
        categories=("all",),
        status_subresource=True,
    ),
    _builtin(
        "",
        "v1",
        "pods",
        "Pod",
        short_names=("po",),
        categories=("all",),
        status_subresource=True,
        field_selectors=POD_FIELDS,
    ),
    _builtin("", "v1", "events", "Event", short_names=("ev",), field_selectors=EVENT_FIELDS),
    _builtin(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        categories=("all",),
        status_subresource=True,
        tracks_generation=True,
    ),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        singular="networkpolicy",
        short_names=("netpol",),
        tracks_generation=True,
    ),
    _builtin(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        short_names=("ev",),
        field_selectors=EVENTS_V1_FIELDS,
    ),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        short_names=("crd", "crds"),
        status_subresource=True,
        tracks_generation=True,
    ),
    # kopf's peering kinds are CRDs in a real cluster; served here so kopf can peer out of the box.
    _builtin(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        "ClusterKopfPeering",
        namespaced=False,
        tracks_generation=True,
    ),
    _builtin("kopf.dev", "v1", "kopfpeerings", "KopfPeering", tracks_generation=True),
)


def resources_from_crd(crd: dict[str, Any]) -> list[Resource]:
    """One `Resource` per served version of a CustomResourceDefinition object."""
    spec = crd["spec"]
    names = spec["names"]
    served = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        served.append(
            Resource(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", names["kind"].lower()),
                short_names=tuple(names.get("shortNames", ())),
                categories=tuple(names.get("categories", ())),
                status_subresource="status" in subresources,
                tracks_generation=True,
                custom=True,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=tuple(version.get("additionalPrinterColumns", ())),
            )
        )
    return served


@dataclass
class Registry:
    """Every served resource by (group, version, plural); CRDs add and remove theirs at runtime."""

    by_gvp: dict[tuple[str, str, str], Resource] = field(default_factory=dict)

    @classmethod
    def with_builtins(cls) -> Registry:
        registry = cls()
        for resource in BUILTINS:
            registry.add(resource)
        return registry

    def add(self, resource: Resource) -> None:
        self.by_gvp[(resource.group, resource.version, resource.plural)] = resource

    def add_crd(self, crd: dict[str, Any]) -> None:
        self.remove_crd(crd)
        for resource in resources_from_crd(crd):
            self.add(resource)

    def remove_crd(self, crd: dict[str, Any]) -> None:
        key = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        for gvp, resource in list(self.by_gvp.items()):
            if resource.custom and resource.key == key:
                del self.by_gvp[gvp]

    def find(self, group: str, version: str, plural: str) -> Resource | None:
        return self.by_gvp.get((group, version, plural))

    def any_version(self, group: str, plural: str) -> Resource | None:
        """Some served version of (group, plural), for code that doesn't care which."""
        for resource in self.by_gvp.values():
            if resource.key == (group, plural):
                return resource
        return None

    def by_kind(self, api_version: str, kind: str) -> Resource | None:
        for resource in self.by_gvp.values():
            if resource.api_version == api_version and resource.kind == kind:
                return resource
        return None

    def group_versions(self) -> dict[str, list[str]]:
        """group -> its versions in registration order (the first is the preferred one)."""
        result: dict[str, list[str]] = {}
        for group, version, _ in self.by_gvp:
            versions = result.setdefault(group, [])
            if version not in versions:
                versions.append(version)
        return result

    def in_group_version(self, group: str, version: str) -> list[Resource]:
        return [r for (g, v, _), r in self.by_gvp.items() if (g, v) == (group, version)]
