"""Fixtures shared by every test folder: where the repo, its tools and the vendored schemas are.

Tests read nothing outside the checkout: upstream CRDs are vendored in third_party/crd-schemas
(`make schemas` refreshes them), and `.ci/run` runs the suite with the checkout's siblings hidden.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
UPSTREAM_SCHEMAS = REPO_ROOT / "third_party" / "crd-schemas"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _sys_path_restored():
    """sys.path as it was before each test. Libraries add to it (kopf adds its script's folder),
    and subprocesses inherit it as PYTHONPATH (torch inductor's ISA probe, which vLLM's CPU
    kernels need): one folder left there by one test once broke every vLLM test after it."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def upstream_schemas() -> Path:
    """KubeRay's and prometheus-operator's CRDs (third_party/crd-schemas/README.md)."""
    return UPSTREAM_SCHEMAS


def tool(name: str) -> str:
    """Path of a binary installed by `make tools`, or skip the test saying how to get it."""
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed: run `make tools`")
    return str(path)
