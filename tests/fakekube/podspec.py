"""Defaults and validation of pod specs (Pods, Deployment templates) as the real server does them.

Covered: the defaults a round-trip shows (restartPolicy, dnsPolicy, terminationMessagePath, ...),
container names (DNS labels, unique), images, container port names (IANA service names, at most
15 characters, unique) and env var names. The rest of the PodSpec is stored as sent.
"""

from __future__ import annotations

import re
from typing import Any

from fakekube.errors import FieldError, bad_request, invalid_value, required_value

_LABEL_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IANA_SVC_NAME = re.compile(r"[-a-z0-9]+")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_POD_DEFAULTS = {
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": 30,
    "dnsPolicy": "ClusterFirst",
    "securityContext": {},
    "schedulerName": "default-scheduler",
}


def _pull_policy(image: str) -> str:
    tag = image.rsplit("/", 1)[-1]
    return "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent"


def default_pod_spec(spec: dict[str, Any]) -> None:
    for key, value in _POD_DEFAULTS.items():
        spec.setdefault(key, value)
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        container.setdefault("imagePullPolicy", _pull_policy(str(container.get("image", ""))))
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")


def _port_errors(path: str, ports: list[dict[str, Any]]) -> list[FieldError]:
    errors, seen = [], set()
    for index, port in enumerate(ports):
        at = f"{path}[{index}]"
        if "containerPort" not in port:
            errors.append(required_value(f"{at}.containerPort"))
        name = port.get("name")
        if name is None:
            continue
        if len(name) > 15:
            errors.append(invalid_value(f"{at}.name", name, "must be no more than 15 characters"))
        elif not _IANA_SVC_NAME.fullmatch(name) or not re.search("[a-z]", name):
            errors.append(
                invalid_value(
                    f"{at}.name",
                    name,
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                )
            )
        if name in seen:
            errors.append(
                FieldError(f"{at}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"')
            )
        seen.add(name)
    return errors


def _container_errors(path: str, container: dict[str, Any]) -> list[FieldError]:
    errors = []
    name = container.get("name")
    if not name:
        errors.append(required_value(f"{path}.name"))
    elif not _LABEL_1123.fullmatch(name) or len(name) > 63:
        errors.append(
            invalid_value(
                f"{path}.name",
                name,
                "a lowercase RFC 1123 label must consist of "
                "lower case alphanumeric characters or '-', and must start and "
                "end with an alphanumeric character",
            )
        )
    if not container.get("image"):
        errors.append(required_value(f"{path}.image"))
    errors += _port_errors(f"{path}.ports", container.get("ports") or [])
    for index, env in enumerate(container.get("env") or []):
        if "value" in env and not isinstance(env["value"], str):
            raise bad_request(
                "json: cannot unmarshal number into Go struct field EnvVar"
                f".{path}.env.value of type string"
            )
        if not _ENV_NAME.fullmatch(str(env.get("name", ""))):
            errors.append(
                invalid_value(
                    f"{path}.env[{index}].name",
                    env.get("name", ""),
                    "a valid environment variable name must consist of "
                    "alphabetic characters, digits, '_', '-', or '.', and must "
                    "not start with a digit",
                )
            )
    return errors


def pod_spec_errors(path: str, spec: dict[str, Any]) -> list[FieldError]:
    """Field errors of a PodSpec at `path` (e.g. "spec.template.spec")."""
    containers = spec.get("containers") or []
    if not containers:
        return [required_value(f"{path}.containers")]
    errors, names = [], set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            at = f"{path}.{group}[{index}]"
            errors += _container_errors(at, container)
            if container.get("name") in names:
                errors.append(
                    FieldError(
                        f"{at}.name",
                        "FieldValueDuplicate",
                        f'Duplicate value: "{container["name"]}"',
                    )
                )
            names.add(container.get("name"))
    return errors
