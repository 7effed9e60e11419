"""`x-kubernetes-validations` CEL rules of a CRD schema, evaluated with cel-python.

Each rule runs with `self` bound to the value at its schema node. Transition rules (those naming
`oldSelf`) run only on update and only where the old object has a value at the same place: old
values correlate through object properties, map values and list items of
`x-kubernetes-list-type: map|set` lists, as in the real server. A rule that is false, or fails to
evaluate, is a field error with the rule's `message` (or `messageExpression`) at the node's path
plus the rule's `fieldPath`. On update, rules without `oldSelf` are skipped where the value is
unchanged (validation ratcheting).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

import celpy

from fakekube.errors import FieldError, show_value

# celpy logs every evaluation step at DEBUG, which floods the logs of operators under test.
logging.getLogger("celpy").setLevel(logging.WARNING)
_OLD_SELF = re.compile(r"\boldSelf\b")
_ENV = celpy.Environment()
_MISSING = object()


@lru_cache(maxsize=512)
def _program(text: str) -> Any:
    return _ENV.program(_ENV.compile(text))


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """Numbers declared `type: number` are doubles in CEL even when written as integers."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else {}
        return {k: _typed(v, props.get(k, extra)) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [_typed(item, items if isinstance(items, dict) else {}) for item in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _evaluate(text: str, activation: dict[str, Any]) -> Any:
    result = _program(text).evaluate(activation)
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def _message(rule: dict[str, Any], activation: dict[str, Any]) -> str:
    if rule.get("message"):
        return str(rule["message"])
    if rule.get("messageExpression"):
        try:
            return str(_evaluate(rule["messageExpression"], activation))
        except celpy.CELEvalError:
            pass
    return f"failed rule: {rule['rule']}"


def _failure(rule: dict[str, Any], path: str, value: Any, message: str) -> FieldError:
    field = path + rule.get("fieldPath", "")
    reason = rule.get("reason", "FieldValueInvalid")
    detail = {
        "FieldValueForbidden": f"Forbidden: {message}",
        "FieldValueRequired": f"Required value: {message}",
        "FieldValueDuplicate": f"Duplicate value: {message}",
    }.get(reason, f"Invalid value: {show_value(value)}: {message}")
    return FieldError(field, reason, detail)


def _check(
    rule: dict[str, Any], schema: dict[str, Any], value: Any, old: Any, path: str
) -> FieldError | None:
    text = rule["rule"]
    uses_old = bool(_OLD_SELF.search(text))
    if uses_old and old is _MISSING:
        return None
    activation = {"self": celpy.json_to_cel(_typed(value, schema))}
    if uses_old:
        activation["oldSelf"] = celpy.json_to_cel(_typed(old, schema))
    try:
        passed = _evaluate(text, activation)
    except celpy.CELEvalError as exc:
        return _failure(
            rule, path, value, f"{exc.args[0] if exc.args else exc} evaluating rule: {text}"
        )
    if bool(passed):
        return None
    return _failure(rule, path, value, _message(rule, activation))


def _old_item(item: Any, old: Any, schema: dict[str, Any]) -> Any:
    if not isinstance(old, list):
        return _MISSING
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        return item if item in old else _MISSING
    if list_type == "map" and isinstance(item, dict):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        for candidate in old:
            if isinstance(candidate, dict) and all(candidate.get(k) == item.get(k) for k in keys):
                return candidate
    return _MISSING


def _walk(value: Any, old: Any, schema: dict[str, Any], path: str, root: bool) -> list[FieldError]:
    errors = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if old is not _MISSING and value == old and not _OLD_SELF.search(rule["rule"]):
            continue  # ratcheting: a rule on an unchanged value is not re-checked
        error = _check(rule, schema, value, old, path)
        if error is not None:
            errors.append(error)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None or (root and key == "metadata"):
                continue
            old_child = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
            errors += _walk(child, old_child, sub, f"{path}.{key}" if path else key, False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            old_item = _old_item(item, old, schema)
            errors += _walk(item, old_item, schema["items"], f"{path}[{index}]", False)
    return errors


def rule_errors(
    obj: dict[str, Any], old: dict[str, Any] | None, schema: dict[str, Any]
) -> list[FieldError]:
    """Field errors of every failing rule in `obj`; `old` is the stored object on update."""
    return _walk(obj, _MISSING if old is None else old, schema, "", True)
