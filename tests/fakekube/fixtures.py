"""pytest fixtures: `fake_kube`, a fresh FakeKube with the DistillJob and RayJob CRDs registered,
and `fake_kube_env`, the same server made the default kubeconfig (for kopf's default login).

Use them from a test module or conftest.py:
`from fakekube.fixtures import fake_kube, fake_kube_env`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fakekube.harness import FakeKube


def crd_paths(repo_root: Path, upstream_schemas: Path) -> list[Path]:
    return [
        repo_root / "crds" / "distilljobs.distill.dev.yaml",
        upstream_schemas / "ray.io_rayjobs.yaml",
    ]


@pytest.fixture
def fake_kube(repo_root: Path, upstream_schemas: Path) -> Iterator[FakeKube]:
    with FakeKube(crds=crd_paths(repo_root, upstream_schemas)) as kube:
        yield kube


@pytest.fixture
def fake_kube_env(fake_kube: FakeKube) -> Iterator[FakeKube]:
    with fake_kube.as_default_kubeconfig():
        yield fake_kube
