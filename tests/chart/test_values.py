"""values.yaml: every key documented and every key used (changing it changes the rendering)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from chart.helpers import CHART, FULL_VALUES, load_yaml

Path_ = tuple[str, ...]
ALTERNATIVES = {  # leaves whose schema allows only a few values
    ("image", "pullPolicy"): "Never",
    ("logLevel",): "debug",
    ("metrics", "service", "type"): "NodePort",
}


def _leaves(values: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Scalar (and list) leaves; an empty map counts as a leaf of its own."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


def _get(values: dict[str, Any], path: Path_) -> Any:
    for key in path:
        values = values[key]
    return values


def _mutated(path: Path_, value: Any) -> Any:
    if path in ALTERNATIVES:
        return ALTERNATIVES[path]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2  # stays inside every bound of the schema
    if isinstance(value, list):
        return value[:-1]
    if isinstance(value, dict):
        return {"example.com/extra": "x"}
    if re.fullmatch(r"[0-9]+[smh]", value):
        return f"{int(value[:-1]) + 1}{value[-1]}"
    return f"{value}x"


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


@pytest.mark.slow
def test_every_value_changes_the_rendering(render, tmp_path) -> None:
    base = _merged(load_yaml(CHART / "values.yaml"), load_yaml(FULL_VALUES))
    baseline = render("--values", str(FULL_VALUES))
    unused = []
    for path in _leaves(load_yaml(CHART / "values.yaml")):
        # Optional blocks are empty in values.yaml; full-values.yaml fills them.
        leaf_paths = list(_leaves(_get(base, path), path)) if path else [path]
        for leaf in leaf_paths:
            values = copy.deepcopy(base)
            parent = _get(values, leaf[:-1])
            parent[leaf[-1]] = _mutated(leaf, parent[leaf[-1]])
            override = tmp_path / "values.yaml"
            override.write_text(yaml.safe_dump(values))
            if render("--values", str(override)) == baseline:
                unused.append(".".join(leaf))
    assert unused == [], "values that change nothing"


def test_every_value_is_documented() -> None:
    """Each key with a value has a `# --` comment, on itself or on the map it belongs to."""
    undocumented, stack, pending = [], [], False  # stack: (indent, key, documented)
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending = pending or stripped.startswith("# --")
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if not match:
            pending = False
            continue
        indent, key, value = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = pending or any(doc for _, _, doc in stack)
        if value and not documented:
            undocumented.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, documented))
        pending = False
    assert undocumented == []
