"""Fixtures for fakekube's own tests: a server with the sample Widget CRD and a client for it."""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes
import pytest

from fakekube import FakeKube
from fakekube.fixtures import fake_kube, fake_kube_env  # noqa: F401  (fixtures)
from fakekube.sample import WIDGET_CRD, Widgets


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(crds=[WIDGET_CRD]) as server:
        yield server


@pytest.fixture
def api(kube: FakeKube) -> Iterator[kubernetes.client.ApiClient]:
    with kube.api_client() as client:
        yield client


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


@pytest.fixture
def widgets(api: kubernetes.client.ApiClient) -> Widgets:
    return Widgets(api)
