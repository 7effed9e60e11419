"""Fixtures shared by every test folder: where the repo, its tools and the upstream schemas are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _find_shared_schemas() -> Path:
    """shared/ lies beside the checkout (CI) or inside it; SHARED_SCHEMAS overrides both."""
    candidates = [
        Path(os.environ.get("SHARED_SCHEMAS", "/nonexistent")),
        REPO_ROOT.parent / "shared" / "schemas",
        REPO_ROOT / "shared" / "schemas",
    ]
    for path in candidates:
        if (path / "ray.io_rayjobs.yaml").is_file():
            return path
    raise FileNotFoundError(f"upstream CRD schemas not found in any of {candidates}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_schemas() -> Path:
    return _find_shared_schemas()


def tool(name: str) -> str:
    """Path of a binary installed by `make tools`, or skip the test saying how to get it."""
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed: run `make tools`")
    return str(path)
