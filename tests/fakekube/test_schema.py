"""CRD admission: defaults, pruning, OpenAPI validation messages and CEL rules (incl. oldSelf)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, ApiException, ApiextensionsV1Api, CustomObjectsApi

from distill_api import load_job_file
from fakekube import FakeKube
from fakekube.sample import WIDGET_CRD, Widgets, status_of, widget
from fakekube.schema import apply_defaults, prune, schema_errors, to_jsonschema


def rejection(exc: pytest.ExceptionInfo[ApiException]) -> tuple[int, str]:
    return exc.value.status, status_of(exc)["message"]


def test_defaults_fill_absent_fields_recursively() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "default": {},
                "properties": {"b": {"type": "integer", "default": 3}},
            },
            "c": {"type": "string", "default": "x"},
            "d": {"type": "string", "nullable": True, "default": "y"},
        },
    }
    obj: dict[str, Any] = {"c": None, "d": None}
    apply_defaults(obj, schema)
    assert obj == {"a": {"b": 3}, "c": "x", "d": None}


def test_prune_drops_undeclared_fields_but_keeps_preserved_ones() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "known": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"x": {"type": "integer"}}},
                    },
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            },
        },
    }
    obj = {
        "metadata": {"name": "n", "labels": {"a": "b"}},
        "kind": "K",
        "spec": {"known": [{"x": 1, "y": 2}], "free": {"any": 1}, "extra": True},
    }
    assert prune(obj, schema, root=True) == ["spec.known[0].y", "spec.extra"]
    assert obj == {
        "metadata": {"name": "n", "labels": {"a": "b"}},
        "kind": "K",
        "spec": {"known": [{"x": 1}], "free": {"any": 1}},
    }


def test_openapi_extensions_become_json_schema() -> None:
    converted = to_jsonschema(
        {
            "x-kubernetes-int-or-string": True,
            "nullable": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        }
    )
    assert converted == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert to_jsonschema({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }


def test_schema_errors_use_the_real_servers_wording() -> None:
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["need"],
                "properties": {
                    "n": {"type": "integer", "minimum": 1},
                    "r": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                    "m": {"type": "string", "enum": ["a", "b"]},
                    "s": {"type": "string", "maxLength": 2},
                    "t": {"type": "integer"},
                    "l": {"type": "array", "maxItems": 1},
                    "need": {"type": "string"},
                },
            }
        },
    }
    obj = {"spec": {"n": 0, "r": 0, "m": "c", "s": "abc", "t": "x", "l": [1, 2]}}
    assert sorted(str(e) for e in schema_errors(schema, obj)) == [
        'spec.l: Invalid value: "array": spec.l in body should have at most 1 items',
        'spec.m: Unsupported value: "c": supported values: "a", "b"',
        "spec.n: Invalid value: 0: spec.n in body should be greater than or equal to 1",
        "spec.need: Required value",
        "spec.r: Invalid value: 0: spec.r in body should be greater than 0",
        'spec.s: Invalid value: "abc": spec.s in body should be at most 2 chars long',
        'spec.t: Invalid value: "string": spec.t in body must be of type integer: "string"',
    ]


def test_created_widget_is_defaulted_and_pruned(widgets: Widgets) -> None:
    body = widget("w", limit=None, note=None, extra="dropped", free={"kept": [1]}, count="5")
    spec = widgets.create(body)["spec"]
    assert spec == {
        "size": 1,
        "limit": 10,
        "mode": "fast",
        "ratio": 0.5,
        "nested": {"depth": 3},
        "note": None,
        "free": {"kept": [1]},
        "count": "5",
    }


def test_strict_field_validation_rejects_unknown_fields(widgets: Widgets) -> None:
    with pytest.raises(ApiException) as exc:
        widgets.create(widget("w", extra=1), field_validation="Strict")
    assert rejection(exc) == (
        400,
        'Widget in version "v1" cannot be handled as a Widget: '
        'strict decoding error: unknown field "spec.extra"',
    )


def test_several_errors_are_listed_in_one_invalid_status(widgets: Widgets) -> None:
    with pytest.raises(ApiException) as exc:
        widgets.create(widget("w", size=0, mode="medium"))
    status = status_of(exc)
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["message"] == (
        'Widget.example.dev "w" is invalid: ['
        'spec.mode: Unsupported value: "medium": supported values: "fast", "slow", '
        "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1]"
    )
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.mode", "spec.size"]


def test_cel_rules_report_the_rule_message_at_its_field_path(widgets: Widgets) -> None:
    with pytest.raises(ApiException) as exc:
        widgets.create(widget("w", size=11))
    assert rejection(exc) == (
        422,
        'Widget.example.dev "w" is invalid: spec.size: Invalid value: '
        '"object": size must not exceed limit',
    )
    with pytest.raises(ApiException) as exc:
        widgets.create(widget("w", ratio=1.5))
    assert rejection(exc)[1].endswith('spec: Invalid value: "object": ratio is 1.5')


def test_transition_rules_run_only_on_update(widgets: Widgets) -> None:
    widgets.create(widget("w", mode="slow", ports=[{"name": "a", "port": 80}]))
    with pytest.raises(ApiException) as exc:
        widgets.patch("w", {"spec": {"mode": "fast"}})
    assert rejection(exc)[1].endswith('spec: Invalid value: "object": mode is immutable')
    with pytest.raises(ApiException) as exc:
        widgets.patch("w", {"spec": {"ports": [{"name": "a", "port": 70}]}})
    assert rejection(exc)[1].endswith("spec.ports[0].port: Invalid value: 70: port may only grow")
    grown = widgets.patch(
        "w", {"spec": {"ports": [{"name": "b", "port": 1}, {"name": "a", "port": 90}]}}
    )
    assert grown["spec"]["ports"] == [{"name": "b", "port": 1}, {"name": "a", "port": 90}]


# -- the project's real CRDs ---------------------------------------------------------------------
def distill_job(repo_root: Path) -> dict[str, Any]:
    return yaml.safe_load((repo_root / "examples" / "math-distill.yaml").read_text())


def test_distilljob_defaults_match_the_pydantic_model(fake_kube: FakeKube, repo_root: Path) -> None:
    with fake_kube.api_client() as api:
        created = CustomObjectsApi(api).create_namespaced_custom_object(
            "distill.dev", "v1alpha1", "default", "distilljobs", distill_job(repo_root)
        )
    model = load_job_file(repo_root / "examples" / "math-distill.yaml")
    assert (
        created["spec"] == model.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"]
    )


def test_distilljob_validation_names_the_field(fake_kube: FakeKube, repo_root: Path) -> None:
    job = distill_job(repo_root)
    job["spec"]["algorithm"]["klPenaltyCoef"] = -1
    with fake_kube.api_client() as api, pytest.raises(ApiException) as exc:
        CustomObjectsApi(api).create_namespaced_custom_object(
            "distill.dev", "v1alpha1", "default", "distilljobs", job
        )
    assert rejection(exc) == (
        422,
        'DistillJob.distill.dev "math-distill" is invalid: '
        "spec.algorithm.klPenaltyCoef: Invalid value: -1: "
        "spec.algorithm.klPenaltyCoef in body should be greater than or equal to 0",
    )


def test_distilljob_transition_rules(fake_kube: FakeKube, repo_root: Path) -> None:
    with fake_kube.api_client() as api:
        jobs = CustomObjectsApi(api)
        args = ("distill.dev", "v1alpha1", "default", "distilljobs")
        created = jobs.create_namespaced_custom_object(*args, distill_job(repo_root))
        with pytest.raises(ApiException) as exc:
            jobs.patch_namespaced_custom_object(
                *args, "math-distill", {"spec": {"student": {"model": "x"}}}
            )
        assert rejection(exc)[1].endswith(
            'spec.student: Invalid value: "object": student is immutable'
        )
        without_teacher = copy.deepcopy(created)
        del without_teacher["spec"]["teacher"]
        with pytest.raises(ApiException) as exc:
            jobs.replace_namespaced_custom_object(*args, "math-distill", without_teacher)
        assert "teacher cannot be added or removed after the job is created" in rejection(exc)[1]
        assert jobs.patch_namespaced_custom_object(
            *args, "math-distill", {"spec": {"suspend": True}}
        )


def test_rayjob_schema_is_enforced(fake_kube: FakeKube) -> None:
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "rj"},
        "spec": {"entrypoint": "python -c 'print(1)'", "shutdownAfterJobFinishes": "yes"},
    }
    with fake_kube.api_client() as api:
        rayjobs = CustomObjectsApi(api)
        with pytest.raises(ApiException) as exc:
            rayjobs.create_namespaced_custom_object("ray.io", "v1", "default", "rayjobs", rayjob)
        assert rejection(exc)[1].endswith(
            'spec.shutdownAfterJobFinishes in body must be of type boolean: "string"'
        )
        rayjob["spec"]["shutdownAfterJobFinishes"] = True
        created = rayjobs.create_namespaced_custom_object(
            "ray.io", "v1", "default", "rayjobs", rayjob
        )
        assert created["spec"]["submissionMode"] == "K8sJobMode"  # a schema default


def test_unchanged_values_are_ratcheted_when_the_crd_tightens(
    api: ApiClient, widgets: Widgets
) -> None:
    widgets.create(widget("w", size=2))
    crd = copy.deepcopy(WIDGET_CRD)
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["size"]["minimum"] = 5
    spec_schema["x-kubernetes-validations"].append({"rule": "self.size > 4", "message": "big"})
    extensions = ApiextensionsV1Api(api)
    current = extensions.read_custom_resource_definition(crd["metadata"]["name"])
    crd["metadata"]["resourceVersion"] = current.metadata.resource_version
    extensions.replace_custom_resource_definition(crd["metadata"]["name"], crd)
    assert widgets.patch("w", {"metadata": {"labels": {"a": "b"}}})["spec"]["size"] == 2
    with pytest.raises(ApiException) as exc:
        widgets.patch("w", {"spec": {"size": 3}})
    assert rejection(exc)[1] == (
        'Widget.example.dev "w" is invalid: ['
        "spec.size: Invalid value: 3: spec.size in body should be greater than or equal to 5, "
        'spec: Invalid value: "object": big]'
    )
