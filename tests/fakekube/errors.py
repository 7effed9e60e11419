"""Errors as the real API server reports them: `Status` objects with reason, code and causes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fakekube.resources import Resource


class ApiError(Exception):
    """An error answered as a `Status` object with an HTTP code."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass(frozen=True)
class FieldError:
    """One cause of a 422 Invalid: `<field>: <detail>` like k8s.io/apimachinery's field.Error."""

    field: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def show_value(value: Any) -> str:
    """Render a bad value as the real server does: scalars as JSON, containers by their type."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def invalid_value(path: str, value: Any, message: str) -> FieldError:
    return FieldError(path, "FieldValueInvalid", f"Invalid value: {show_value(value)}: {message}")


def required_value(path: str, message: str = "") -> FieldError:
    return FieldError(
        path, "FieldValueRequired", "Required value" + (f": {message}" if message else "")
    )


def forbidden(path: str, message: str) -> FieldError:
    return FieldError(path, "FieldValueForbidden", f"Forbidden: {message}")


def not_supported(path: str, value: Any, allowed: list[Any]) -> FieldError:
    choices = ", ".join(json.dumps(choice) for choice in allowed)
    return FieldError(
        path,
        "FieldValueNotSupported",
        f"Unsupported value: {json.dumps(value)}: supported values: {choices}",
    )


def _details(resource: Resource, name: str, kind: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind or resource.plural}
    if resource.group:
        details["group"] = resource.group
    return details


def not_found(resource: Resource, name: str) -> ApiError:
    message = f'{resource.qualified} "{name}" not found'
    return ApiError(404, "NotFound", message, _details(resource, name))


def already_exists(resource: Resource, name: str) -> ApiError:
    message = f'{resource.qualified} "{name}" already exists'
    return ApiError(409, "AlreadyExists", message, _details(resource, name))


def conflict(resource: Resource, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {resource.qualified} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(resource, name))


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(resource: Resource, name: str, errors: list[FieldError]) -> ApiError:
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details = _details(resource, name, resource.kind)
    details["causes"] = [
        {"reason": e.reason, "message": e.detail, "field": e.field} for e in errors
    ]
    return ApiError(
        422, "Invalid", f'{resource.qualified_kind} "{name}" is invalid: {listed}', details
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def namespace_not_found(namespace: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'namespaces "{namespace}" not found',
        {"name": namespace, "kind": "namespaces"},
    )


def no_such_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    accepted = "application/json-patch+json, application/merge-patch+json"
    message = (
        f"the body of the request was in an unknown format ({content_type}) - accepted "
        f"media types include: {accepted}"
    )
    return ApiError(415, "UnsupportedMediaType", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
