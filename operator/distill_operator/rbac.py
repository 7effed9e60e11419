"""Every Kubernetes API call the operator makes, declared once.

The Helm chart renders its (Cluster)Role from this list and the integration tests check that every
request the running operator sent to the fake API server is covered by it, so the two cannot drift.

    python -m distill_operator.rbac        # prints the rules as YAML (a Role/ClusterRole `rules:`)
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import yaml


class Permission(NamedTuple):
    """One RBAC rule: an API group ("" is core), a resource (or `resource/subresource`), verbs."""

    api_group: str
    resource: str
    verbs: tuple[str, ...]


REQUIRED_PERMISSIONS: list[Permission] = [
    # Our own resource: kopf watches it and patches its annotations (handler progress); the
    # RayJob watcher reads it; every handler writes its status.
    Permission("distill.dev", "distilljobs", ("get", "list", "watch", "patch")),
    Permission("distill.dev", "distilljobs/status", ("patch",)),
    # Owner references with blockOwnerDeletion need this where the OwnerReferencesPermission-
    # Enforcement admission plugin is on (OpenShift).
    Permission("distill.dev", "distilljobs/finalizers", ("update",)),
    # What one DistillJob owns: created, or read (is it ours?) and patched back to the desired
    # state; watched (label distill.dev/job) so that a deleted one is noticed and restored;
    # deleted by the garbage collector through ownerReferences, never by the operator.
    Permission("ray.io", "rayjobs", ("get", "list", "watch", "create", "patch")),
    Permission("", "configmaps", ("get", "list", "watch", "create", "patch")),
    Permission("", "services", ("get", "list", "watch", "create", "patch")),
    Permission("apps", "deployments", ("get", "list", "watch", "create", "patch")),
    Permission("networking.k8s.io", "networkpolicies", ("get", "list", "watch", "create", "patch")),
    # Kueue's Workloads of our RayJobs: why a queued job waits (status.admission, Events).
    Permission("kueue.x-k8s.io", "workloads", ("get", "list", "watch")),
    # kopf posts Events (core/v1) about handlers and phase changes.
    Permission("", "events", ("create",)),
    # kopf: peering (with --peering or when auto-detected) and runtime discovery of CRDs and
    # namespaces (it starts watching RayJobs once KubeRay's CRD exists).
    Permission("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch")),
    Permission("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch")),
    Permission("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
    Permission("", "namespaces", ("list", "watch")),
]

# These live outside any namespace: a namespaced install still needs a ClusterRole for them.
CLUSTER_SCOPED_RESOURCES = frozenset(
    {"clusterkopfpeerings", "customresourcedefinitions", "namespaces"}
)


def rbac_rules(permissions: list[Permission] = REQUIRED_PERMISSIONS) -> list[dict[str, list[str]]]:
    """The permissions as Kubernetes PolicyRule dicts, one rule per (group, resource)."""
    return [
        {"apiGroups": [p.api_group], "resources": [p.resource], "verbs": list(p.verbs)}
        for p in permissions
    ]


def allows(api_group: str, resource: str, verb: str) -> bool:
    """Whether REQUIRED_PERMISSIONS grants `verb` on `api_group`/`resource`."""
    return any(
        p.api_group == api_group and p.resource == resource and verb in p.verbs
        for p in REQUIRED_PERMISSIONS
    )


if __name__ == "__main__":
    yaml.safe_dump({"rules": rbac_rules()}, sys.stdout, sort_keys=False)
