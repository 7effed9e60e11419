"""Object metadata rules the server enforces: names, timestamps, server-owned fields."""

from __future__ import annotations

import datetime
import re
import secrets
import string
from typing import Any

from fakekube.errors import FieldError, bad_request, invalid_value
from fakekube.resources import Resource

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL_1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_RULES = {
    "subdomain": (
        _SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case "
        "alphanumeric characters, '-' or '.', and must start and end with an "
        "alphanumeric character (e.g. 'example.com', regex used for validation is "
        f"'{_SUBDOMAIN}')",
    ),
    "label1123": (
        _LABEL_1123,
        63,
        "a lowercase RFC 1123 label must consist of lower case "
        "alphanumeric characters or '-', and must start and end with an alphanumeric "
        f"character (e.g. 'my-name',  or '123-abc', regex used for validation is "
        f"'{_LABEL_1123}')",
    ),
    "label1035": (
        _LABEL_1035,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric "
        "characters or '-', start with an alphabetic character, and end with an "
        "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
        f"validation is '{_LABEL_1035}')",
    ),
}
# Kinds whose names become DNS labels (Service -> a DNS name, Namespace -> a path segment).
_NAME_RULE = {("", "services"): "label1035", ("", "namespaces"): "label1123"}
SERVER_OWNED = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(prefix: str) -> str:
    return prefix + "".join(
        secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5)
    )


def name_errors(resource: Resource, name: str) -> list[FieldError]:
    """The real server's name check for the kind: DNS subdomain unless the kind needs a label."""
    pattern, limit, why = _RULES[_NAME_RULE.get(resource.key, "subdomain")]
    errors = []
    if len(name) > limit:
        errors.append(
            invalid_value("metadata.name", name, f"must be no more than {limit} characters")
        )
    if not re.fullmatch(pattern, name):
        errors.append(invalid_value("metadata.name", name, why))
    return errors


_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_KEY_WHY = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
    "and end with an alphanumeric character"
)
_VALUE_WHY = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', "
    "'_' or '.', and must start and end with an alphanumeric character"
)


def _key_errors(field: str, key: str) -> list[FieldError]:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not re.fullmatch(_SUBDOMAIN, prefix)):
        return [invalid_value(field, key, "prefix part " + _RULES["subdomain"][2])]
    if len(name) > 63:
        return [invalid_value(field, key, "name part must be no more than 63 characters")]
    return [] if _QUALIFIED_NAME.fullmatch(name) else [invalid_value(field, key, _KEY_WHY)]


def metadata_errors(md: dict[str, Any]) -> list[FieldError]:
    """Label keys and values, annotation keys: the ObjectMeta checks every kind goes through."""
    for field in ("labels", "annotations"):
        for key, value in (md.get(field) or {}).items():
            if not isinstance(value, str):
                raise bad_request(
                    f"json: cannot unmarshal {type(value).__name__} into Go struct "
                    f"field ObjectMeta.metadata.{field} of type string ({key!r})"
                )
    errors = []
    for key, value in (md.get("labels") or {}).items():
        errors += _key_errors("metadata.labels", key)
        if len(value) > 63:
            errors.append(
                invalid_value("metadata.labels", value, "must be no more than 63 characters")
            )
        elif not _LABEL_VALUE.fullmatch(value):
            errors.append(invalid_value("metadata.labels", value, _VALUE_WHY))
    for key in md.get("annotations") or {}:
        errors += _key_errors("metadata.annotations", key)
    return errors


def desired_state(obj: dict[str, Any]) -> dict[str, Any]:
    """What `metadata.generation` tracks: everything except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
