"""events.k8s.io/v1 Events are core/v1 Events under other field names, as in a real cluster.

Both APIs read and write one store, so `kubectl describe` (core/v1) shows events that an operator
posted through events.k8s.io/v1 and the other way round. Creating an events.k8s.io/v1 Event
requires the fields the real server requires of that version.
"""

from __future__ import annotations

from typing import Any

from fakekube.errors import FieldError, not_supported, required_value

ALIASES = {("events.k8s.io", "events"): ("", "v1", "events")}
# events.k8s.io/v1 field -> core/v1 field
_RENAMES = (
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedCount", "count"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("reportingController", "reportingComponent"),
)


def to_core(event: dict[str, Any]) -> dict[str, Any]:
    core = dict(event, apiVersion="v1")
    for new, old in _RENAMES:
        if new in core:
            core[old] = core.pop(new)
    return core


def from_core(event: dict[str, Any], api_version: str) -> dict[str, Any]:
    converted = dict(event, apiVersion=api_version)
    for new, old in _RENAMES:
        if old in converted:
            converted[new] = converted.pop(old)
    return converted


def v1_errors(event: dict[str, Any]) -> list[FieldError]:
    """What the server requires of an events.k8s.io/v1 Event on create."""
    errors = [
        required_value(field)
        for field in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
        if not event.get(field)
    ]
    if event.get("type") not in ("Normal", "Warning"):
        errors.append(not_supported("type", event.get("type"), ["Normal", "Warning"]))
    return errors
