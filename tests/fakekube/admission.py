"""Admission of built-in kinds: the defaults and checks of the real server that operators trip on.

ConfigMap data must be strings; Secret `stringData` is folded into base64 `data`; Services get
`type`, `clusterIP` (allocated from 10.96.0.0/12 and kept across updates), `sessionAffinity` and
port defaults, and their ports are checked (names required when several, unique DNS labels);
Deployments get replicas/strategy/history defaults, their selector must match the template labels
and is immutable; pod templates go through `fakekube.podspec`. Other kinds are stored as sent.
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import re
from typing import Any

from fakekube.errors import FieldError, bad_request, invalid, invalid_value, required_value
from fakekube.podspec import default_pod_spec, pod_spec_errors
from fakekube.resources import Resource
from fakekube.selectors import label_matcher

_LABEL_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_CLUSTER_IPS = (f"10.96.{n // 250}.{n % 250 + 1}" for n in itertools.count(1))
_DEPLOYMENT_DEFAULTS = {
    "replicas": 1,
    "revisionHistoryLimit": 10,
    "progressDeadlineSeconds": 600,
    "strategy": {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
    },
}


def _strings(obj: dict[str, Any], field: str, kind: str) -> None:
    for key, value in (obj.get(field) or {}).items():
        if not isinstance(value, str):
            raise bad_request(
                f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                f"{kind}.{field} of type string (key {key!r})"
            )


def _config_map(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    _strings(obj, "data", "ConfigMap")
    keys = [*(obj.get("data") or {}), *(obj.get("binaryData") or {})]
    return [
        invalid_value(
            f"data[{key}]",
            key,
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
        )
        for key in keys
        if not _CONFIG_KEY.fullmatch(key)
    ]


def _secret(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    _strings(obj, "stringData", "Secret")
    data = obj.setdefault("data", {}) or {}
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(value.encode()).decode()
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except binascii.Error as exc:
            raise bad_request(f"illegal base64 data in Secret data[{key!r}]: {exc}") from exc
    obj["data"] = data
    obj.setdefault("type", "Opaque")
    return []


def _service_port_errors(ports: list[dict[str, Any]]) -> list[FieldError]:
    errors, names = [], set()
    for index, port in enumerate(ports):
        at = f"spec.ports[{index}]"
        port.setdefault("protocol", "TCP")
        if "port" not in port:
            errors.append(required_value(f"{at}.port"))
        port.setdefault("targetPort", port.get("port"))
        name = port.get("name")
        if len(ports) > 1 and not name:
            errors.append(required_value(f"{at}.name"))
        elif name and not _LABEL_1123.fullmatch(name):
            errors.append(
                invalid_value(
                    f"{at}.name",
                    name,
                    "a lowercase RFC 1123 label must "
                    "consist of lower case alphanumeric characters or '-'",
                )
            )
        elif name in names:
            errors.append(
                FieldError(f"{at}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"')
            )
        names.add(name)
    return errors


def _service(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    old_ip = (old or {}).get("spec", {}).get("clusterIP")
    if spec["type"] != "ExternalName":
        spec.setdefault("clusterIP", old_ip or next(_CLUSTER_IPS))
        if old_ip and spec["clusterIP"] != old_ip:
            return [invalid_value("spec.clusterIP", spec["clusterIP"], "field is immutable")]
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    ports = spec.get("ports") or []
    if not ports and spec["type"] != "ExternalName" and spec.get("clusterIP") != "None":
        return [required_value("spec.ports")]
    return _service_port_errors(ports)


def _deployment(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.setdefault("spec", {})
    for key, value in _DEPLOYMENT_DEFAULTS.items():
        spec.setdefault(key, copy.deepcopy(value))
    template = spec.get("template") or {}
    default_pod_spec(template.get("spec") or {})
    selector = spec.get("selector")
    if not selector:
        return [required_value("spec.selector")]
    errors = []
    if old is not None and selector != old["spec"].get("selector"):
        errors.append(invalid_value("spec.selector", selector, "field is immutable"))
    labels = (template.get("metadata") or {}).get("labels") or {}
    expressions = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
    if not labels or not label_matcher(expressions)({"metadata": {"labels": labels}}):
        errors.append(
            invalid_value(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            )
        )
    return errors + pod_spec_errors("spec.template.spec", template.get("spec") or {})


def _pod(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.setdefault("spec", {})
    default_pod_spec(spec)
    if old is None:
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    return pod_spec_errors("spec", spec)


_ADMITTERS = {
    ("", "configmaps"): _config_map,
    ("", "secrets"): _secret,
    ("", "services"): _service,
    ("", "pods"): _pod,
    ("apps", "deployments"): _deployment,
}


def admit(resource: Resource, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Default and check a built-in object in place, or raise the server's error."""
    admitter = _ADMITTERS.get(resource.key)
    if admitter is None:
        return
    errors = admitter(obj, old)
    if errors:
        raise invalid(resource, obj["metadata"]["name"], errors)
