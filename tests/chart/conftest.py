"""Fixtures for the Helm chart tests: a `helm` runner with private config dirs, and rendering."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from chart.helpers import CHART, RELEASE_NAMESPACE
from conftest import tool

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm writes config/cache/data dirs; keep them out of $HOME and the checkout."""
    home = tmp_path_factory.mktemp("helm")
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="session")
def run_helm(helm_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    helm = tool("helm")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [helm, *args], env=helm_env, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def render(run_helm: Callable[..., subprocess.CompletedProcess[str]]) -> Render:
    """`render(*helm_args)` -> the objects `helm template` renders (crds/ included)."""

    def _render(*args: str, include_crds: bool = True) -> list[dict[str, Any]]:
        flags = ["--include-crds"] if include_crds else []
        out = run_helm(
            "template", "distill", str(CHART), "--namespace", RELEASE_NAMESPACE, *flags, *args
        ).stdout
        # The C loader: the rendered CRD is large (it embeds pod-template schemas).
        return [doc for doc in yaml.load_all(out, Loader=yaml.CSafeLoader) if doc]

    return _render
