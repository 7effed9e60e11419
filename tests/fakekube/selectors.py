"""Label selectors (`a=b,c!=d,e in (x,y),!f`) and field selectors (`metadata.name=x`).

Parsing errors answer 400 like the real server; field selectors accept only the field labels the
resource supports (`Resource.field_selectors`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fakekube.errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]

_SET_EXPR = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_EXPR = re.compile(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*(\S*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside `in (...)` value lists."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def _label_requirement(text: str) -> Callable[[dict[str, str]], bool]:
    if match := _SET_EXPR.match(text):
        key, op, values_text = match.groups()
        values = {value.strip() for value in values_text.split(",") if value.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_EXPR.match(text):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(text):
        negated, key = match.groups()
        return (lambda labels: key not in labels) if negated else (lambda labels: key in labels)
    raise bad_request(f"unable to parse requirement: {text.strip()!r}")


def label_matcher(selector: str | None) -> Matcher:
    """A predicate on objects for a label selector string (empty: everything matches)."""
    requirements = [_label_requirement(part) for part in _split_requirements(selector or "")]

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(requirement(labels) for requirement in requirements)

    return matches


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string form of a dotted field, "" where absent, as the server compares it."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_matcher(selector: str | None, supported: frozenset[str]) -> Matcher:
    """A predicate for a field selector; unsupported field labels are a 400 like the real server."""
    requirements: list[tuple[str, bool, str]] = []
    for part in _split_requirements(selector or ""):
        match = _EQ_EXPR.match(part)
        if match is None:
            raise bad_request(f"invalid selector: {selector!r}; can't understand {part!r}")
        key, op, value = match.groups()
        if key not in supported:
            raise bad_request(f"field label not supported: {key}")
        requirements.append((key, op != "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, key) == value) == equal for key, equal, value in requirements)

    return matches
