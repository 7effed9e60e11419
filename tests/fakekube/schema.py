"""Custom-resource admission like the real API server: defaulting, pruning, OpenAPI validation.

Order as in kube-apiserver: `default`s from the CRD's structural schema are applied top-down (a
`null` in a non-nullable field is dropped first), unknown fields are pruned (a 400 "strict
decoding error" instead when the client sent `fieldValidation=Strict`, as kubectl does by
default), then the object is validated with jsonschema (Draft 4: OpenAPI v3.0's boolean
`exclusiveMinimum`) and by the CEL rules in `fakekube.cel`. Error messages follow the real server's
`<field.path>: Invalid value: <value>: <why>` form. On update, errors at values left unchanged
are dropped (CRD validation ratcheting, GA in Kubernetes 1.33). `format` is not checked.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema

from fakekube import cel
from fakekube.errors import (
    FieldError,
    bad_request,
    invalid,
    invalid_value,
    not_supported,
    required_value,
)
from fakekube.resources import Resource

_IMPLICIT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})
_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft4Validator]] = {}
_ABSENT = object()
_REQUIRED = re.compile(r"^'(.+)' is a required property$")


def apply_defaults(value: Any, schema: dict[str, Any], root: bool = False) -> None:
    """Fill in schema `default`s where a field is absent, recursing into what is present."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if root and key in _IMPLICIT_FIELDS:
                continue
            if key in value and value[key] is None and not sub.get("nullable"):
                del value[key]
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(props):
                apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])


def prune(value: Any, schema: dict[str, Any], path: str = "", root: bool = False) -> list[str]:
    """Drop fields the schema doesn't declare (unless preserved); return their paths."""
    pruned: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        implicit = root or schema.get("x-kubernetes-embedded-resource")
        for key in list(value):
            child = f"{path}.{key}" if path else key
            if implicit and key in _IMPLICIT_FIELDS:
                continue
            if key in props:
                pruned += prune(value[key], props[key], child)
            elif isinstance(extra, dict):
                pruned += prune(value[key], extra, child)
            elif not keep_unknown:
                del value[key]
                pruned.append(child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            pruned += prune(item, schema["items"], f"{path}[{index}]")
    return pruned


def to_jsonschema(schema: Any) -> Any:
    """OpenAPI v3.0 structural schema -> JSON Schema Draft 4 (nullable, int-or-string)."""
    if isinstance(schema, list):
        return [to_jsonschema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {k: to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    result.pop("format", None)
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable"):
        result.pop("nullable")
        if "type" in result:
            result["type"] = [result["type"], "null"]
        if "enum" in result:
            result["enum"] = [*result["enum"], None]
    return result


def _validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        converted = to_jsonschema(schema)
        # Object metadata is validated by the server's own rules, never by the CRD schema.
        converted.setdefault("properties", {})["metadata"] = {"type": "object"}
        cached = (schema, jsonschema.Draft4Validator(converted))
        _VALIDATORS[id(schema)] = cached
    return cached[1]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", dict: "object", list: "array"}[type(value)]


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _bound(error: jsonschema.ValidationError, path: str) -> str:
    limit = error.validator_value
    exclusive = error.schema.get(f"exclusive{error.validator.capitalize()}") is True
    relation = "greater" if error.validator == "minimum" else "less"
    return f"{path} in body should be {relation} than{'' if exclusive else ' or equal to'} {limit}"


_MESSAGES = {
    "minLength": "should be at least {limit} chars long",
    "maxLength": "should be at most {limit} chars long",
    "minItems": "should have at least {limit} items",
    "maxItems": "should have at most {limit} items",
    "minProperties": "should have at least {limit} properties",
    "maxProperties": "should have at most {limit} properties",
    "pattern": "should match '{limit}'",
    "multipleOf": "should be a multiple of {limit}",
}


def _field_error(error: jsonschema.ValidationError) -> FieldError:
    path = _path(error.absolute_path)
    if error.validator == "required":
        missing = _REQUIRED.match(error.message)
        name = missing.group(1) if missing else "?"
        return required_value(f"{path}.{name}" if path else name)
    if error.validator == "type":
        actual = _json_type(error.instance)
        expected = error.validator_value
        expected = expected if isinstance(expected, str) else "/".join(expected)
        why = f'{path} in body must be of type {expected}: "{actual}"'
        return FieldError(path, "FieldValueTypeInvalid", f'Invalid value: "{actual}": {why}')
    if error.validator == "enum":
        return not_supported(path, error.instance, list(error.validator_value))
    if error.validator in ("minimum", "maximum"):
        return invalid_value(path, error.instance, _bound(error, path))
    template = _MESSAGES.get(str(error.validator))
    why = (
        f"{path} in body " + template.format(limit=error.validator_value)
        if template
        else error.message
    )
    return invalid_value(path, error.instance, why)


def _at(obj: Any, parts: Any) -> Any:
    for part in parts:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return _ABSENT
    return obj


def schema_errors(
    schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None
) -> list[FieldError]:
    """Schema violations; on update, those at values equal to the old ones are ratcheted away."""
    errors = sorted(
        _validator(schema).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))
    )
    if old is not None:
        errors = [e for e in errors if _at(obj, e.absolute_path) != _at(old, e.absolute_path)]
    return [_field_error(error) for error in errors]


def admit(
    resource: Resource,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    field_validation: str | None = None,
) -> None:
    """Default, prune and validate a custom resource in place, or raise the server's error."""
    schema = resource.schema
    if not schema:
        return
    apply_defaults(obj, schema, root=True)
    pruned = prune(obj, schema, root=True)
    if pruned and field_validation == "Strict":
        unknown = ", ".join(f'unknown field "{path}"' for path in pruned)
        raise bad_request(
            f'{resource.kind} in version "{resource.version}" cannot be handled as a '
            f"{resource.kind}: strict decoding error: {unknown}"
        )
    errors = schema_errors(schema, obj, old)
    errors += cel.rule_errors(obj, old, schema)
    if errors:
        raise invalid(resource, obj["metadata"].get("name", ""), errors)
