"""pytest fixtures: `fake_kube`, a fresh FakeKube with the DistillJob and RayJob CRDs registered,
and `fake_kube_env`, the same server made the default kubeconfig (for kopf's default login).

Use them from a test module or conftest.py:
`from fakekube.fixtures import fake_kube, fake_kube_env`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakekube.harness import FakeKube


def crd_paths(repo_root: Path, upstream_schemas: Path) -> list[Path]:
    return [
        repo_root / "crds" / "distilljobs.distill.dev.yaml",
        upstream_schemas / "ray.io_rayjobs.yaml",
    ]


def kueue_workload_crd() -> dict[str, Any]:
    """Kueue's Workload kind (kueue.x-k8s.io/v1beta2), its schema left open: Kueue's CRD is not
    vendored, and tests write Workloads as Kueue would (status.conditions, status.admission)."""
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "workloads.kueue.x-k8s.io"},
        "spec": {
            "group": "kueue.x-k8s.io",
            "scope": "Namespaced",
            "names": {
                "kind": "Workload",
                "listKind": "WorkloadList",
                "plural": "workloads",
                "singular": "workload",
            },
            "versions": [
                {
                    "name": "v1beta2",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": open_object},
                }
            ],
        },
    }


@pytest.fixture
def fake_kube(repo_root: Path, upstream_schemas: Path) -> Iterator[FakeKube]:
    with FakeKube(crds=crd_paths(repo_root, upstream_schemas)) as kube:
        yield kube


@pytest.fixture
def fake_kube_env(fake_kube: FakeKube) -> Iterator[FakeKube]:
    with fake_kube.as_default_kubeconfig():
        yield fake_kube
