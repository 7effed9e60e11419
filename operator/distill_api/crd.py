"""Generate the DistillJob CustomResourceDefinition from the pydantic model.

    python -m distill_api.crd crds/distilljobs.distill.dev.yaml [more/paths.yaml ...]

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 schema:
no `$ref`, no `anyOf` with null, no `additionalProperties: false`, boolean `exclusiveMinimum`, and
nested objects defaulted to `{}` so their own defaults apply. `to_structural` does that translation.

Kubernetes-typed passthrough fields (tolerations, affinity, volumes, env, ...; marked
`x-distill-k8s-schema` in the model) get the schema KubeRay's RayJob CRD gives the same field of a
pod template (third_party/crd-schemas, vendored): the DistillJob is then validated and pruned
exactly as the pod template it ends up in.
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from distill_api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    DistillJobSpec,
    DistillJobStatus,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
_DROPPED_KEYS = {"title", "$defs"}
K8S_SCHEMA_MARK = "x-distill-k8s-schema"
KUBERAY_CRD = Path(__file__).resolve().parents[2] / "third_party/crd-schemas/ray.io_rayjobs.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queueName"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.totalSteps", "priority": 1},
    {"name": "Reward", "type": "number", "jsonPath": ".status.reward"},
    {"name": "KL", "type": "number", "jsonPath": ".status.klPerToken"},
    {"name": "Val", "type": "number", "jsonPath": ".status.valReward", "priority": 1},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@cache
def _pod_template_schemas() -> dict[str, dict[str, Any]]:
    """KubeRay's schemas of a pod spec and of its first container, by `pod.` / `container.`."""
    with open(KUBERAY_CRD, encoding="utf-8") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    spec = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    head = spec["rayClusterSpec"]["properties"]["headGroupSpec"]["properties"]
    pod = head["template"]["properties"]["spec"]["properties"]
    container = pod["containers"]["items"]["properties"]
    return {
        **{f"pod.{k}": v for k, v in pod.items()},
        **{f"container.{k}": v for k, v in container.items()},
    }


def kubernetes_schema(path: str, description: str | None) -> dict[str, Any]:
    """The vendored schema of one pod-template field, with our description.

    It keeps the mark, so that translating a node twice (under `anyOf` or `$ref`) leaves it as
    it is; `model_schema` removes the marks at the end.
    """
    schema = {**_pod_template_schemas()[path], K8S_SCHEMA_MARK: path}
    if description:
        schema["description"] = description
    return schema


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_structural(node: Any, defs: dict[str, Any]) -> Any:
    """Translate one pydantic JSON-Schema node into a Kubernetes structural schema node."""
    if isinstance(node, list):
        return [to_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if K8S_SCHEMA_MARK in node:
        return kubernetes_schema(node[K8S_SCHEMA_MARK], node.get("description"))
    if "$ref" in node:  # a field's own extras (description, CEL) sit beside its $ref
        target = defs[node.pop("$ref").split("/")[-1]]
        node = {**target, **node, **_merge_validations(target, node)}
    # Optional[X] -> X: absent means unset, we never send null. (int-or-string, from the vendored
    # Kubernetes schemas, is the one union a structural schema allows.)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express union {variants} in a structural schema")
        inner = to_structural(variants[0], defs)
        node = {**inner, **node, **_merge_validations(inner, node)}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    # Not bool (an int subclass): a node reached twice (a $ref under anyOf) is already translated.
    if _number(node.get("exclusiveMinimum")):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if _number(node.get("exclusiveMaximum")):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if node.get("default", ...) is None:
        del node["default"]
    if isinstance(node.get("additionalProperties"), bool):  # a typed map's schema stays
        del node["additionalProperties"]
    out = {k: to_structural(v, defs) for k, v in node.items() if k not in _DROPPED_KEYS}
    if "properties" in node:
        out["properties"] = {k: to_structural(v, defs) for k, v in node["properties"].items()}
    return out


def _merge_validations(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    rules = a.get("x-kubernetes-validations", []) + b.get("x-kubernetes-validations", [])
    return {"x-kubernetes-validations": rules} if rules else {}


def _default_nested_objects(schema: dict[str, Any], model: type) -> None:
    """Give `default: {}` to sub-objects built by default_factory, so their defaults apply."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if field.default_factory is not None and alias in schema.get("properties", {}):
            prop = schema["properties"][alias]
            if prop.get("type") == "object":
                prop.setdefault("default", {})
                sub_model = field.annotation
                if isinstance(sub_model, type) and hasattr(sub_model, "model_fields"):
                    _default_nested_objects(prop, sub_model)


def _strip_marks(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip_marks(item) for item in node]
    if isinstance(node, dict):
        return {k: _strip_marks(v) for k, v in node.items() if k != K8S_SCHEMA_MARK}
    return node


def model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _strip_marks(to_structural(raw, raw.get("$defs", {})))
    _default_nested_objects(schema, model)
    return schema


def build_crd() -> dict[str, Any]:
    """The DistillJob CRD manifest (apiextensions.k8s.io/v1)."""
    spec_schema = model_schema(DistillJobSpec)
    status_schema = model_schema(DistillJobStatus)
    root = {
        "type": "object",
        "description": "An on-policy distillation run: RL on math with a teacher KL penalty.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "distill-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["all", "distill"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd() -> str:
    header = f"# Generated from distill_api ({API_VERSION}) by `make crds`; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distill_api.crd",
        description="Write the DistillJob CRD generated from the API model.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        default=[f"crds/{CRD_NAME}.yaml"],
        help="files to write (default: %(default)s)",
    )
    paths = parser.parse_args(argv).paths
    text = render_crd()
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
