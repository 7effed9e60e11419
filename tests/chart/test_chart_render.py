"""helm lint/template of the chart: every rendered object valid for Kubernetes 1.30+ and its CRD.

.venv/bin/python -m pytest tests/chart/test_chart_render.py -q
"""

from __future__ import annotations

import json
import shutil
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart.helpers import (
    CHART,
    FULL_VALUES,
    REPO_ROOT,
    crd_schemas,
    find,
    load_yaml,
    unknown_fields,
)
from jsonschema import Draft4Validator

K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
VARIANTS = {
    "defaults": [],
    "full": ["--values", str(FULL_VALUES)],
    "cluster-wide-peering": ["--set", "replicas=3", "--set", "prometheusRule.enabled=true"],
}


@pytest.fixture(scope="module")
def custom_schemas(upstream_schemas) -> dict[tuple[str, str], dict[str, Any]]:
    paths = [
        *sorted(upstream_schemas.glob("monitoring.coreos.com_*.yaml")),
        *sorted((CHART / "crds").glob("*.yaml")),
    ]
    return crd_schemas(paths)


@pytest.mark.parametrize("values", [[], ["--values", str(FULL_VALUES)]], ids=["defaults", "full"])
def test_helm_lint_is_clean(run_helm, values: list[str]) -> None:
    result = run_helm("lint", "--strict", str(CHART), *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid(render, custom_schemas, variant: str) -> None:
    objects = render(*VARIANTS[variant])
    assert objects, "nothing rendered"
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        key = (obj["apiVersion"], obj["kind"])
        if key in custom_schemas:
            # Draft 4 is what OpenAPI v3 schemas follow; CRDs' Go regexes are not checked as such.
            errors = [e.message for e in Draft4Validator(custom_schemas[key]).iter_errors(obj)]
            assert errors == [], where
            assert unknown_fields(obj, custom_schemas[key]) == [], where
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{where} invalid for Kubernetes {version}: {err.message}")


def test_optional_parts_follow_their_switches(render) -> None:
    default_kinds = {o["kind"] for o in render()}
    assert default_kinds == {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "ConfigMap",
    }
    full_kinds = {o["kind"] for o in render("--values", str(FULL_VALUES))}
    added = {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "KopfPeering",
        "PodDisruptionBudget",  # replicas: 2
    }
    assert full_kinds == default_kinds | added
    off = render(
        "--set",
        "dashboard.enabled=false",
        "--set",
        "rbac.create=false",
        "--set",
        "userRoles.create=false",
    )
    assert {o["kind"] for o in off} == default_kinds - {
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
    }


def _operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_operator_runs_hardened(render) -> None:
    objects = render()
    (deployment,) = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _operator_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_operator_arguments_follow_the_mode(render) -> None:
    default = _operator_container(render())
    assert default["image"] == "ghcr.io/distill-operator/operator:0.1.0"
    assert default["args"][:4] == [
        "--all-namespaces",
        "--standalone",
        "--liveness-port=8080",
        "--metrics-port=9100",
    ]
    full = _operator_container(render("--values", str(FULL_VALUES)))
    assert full["args"][:7] == [
        "--namespace=ml-research",
        "--namespace=ml-prod",
        "--peering=distill",
        "--liveness-port=8081",
        "--metrics-port=9101",
        "--verbose",
        "--job-run-as-user=2000",
    ]
    ports = {p["name"]: p["containerPort"] for p in full["ports"]}
    assert ports == {"metrics": 9101, "healthz": 8081}


def test_peering_objects_match_the_mode(render) -> None:
    assert find(render(), "ClusterKopfPeering") == []
    (cluster,) = find(render("--set", "replicas=2"), "ClusterKopfPeering")
    assert cluster["metadata"]["name"] == "distill-distill-operator"
    assert cluster["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    namespaced = find(render("--values", str(FULL_VALUES)), "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in namespaced) == ["ml-prod", "ml-research"]


def test_dashboard_configmap_carries_the_dashboard(render) -> None:
    (configmap,) = find(render("--values", str(FULL_VALUES)), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    shipped = json.loads(configmap["data"]["distill.json"])
    assert shipped == json.loads((CHART / "dashboards" / "distill.json").read_text())
    assert shipped["uid"] == "distill-jobs"


def test_chart_versions_follow_the_project() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["appVersion"] == project
    assert chart["version"] == project


def test_chart_crd_is_the_generated_one() -> None:
    shipped = (CHART / "crds" / "distilljobs.distill.dev.yaml").read_text()
    assert shipped == (REPO_ROOT / "crds" / "distilljobs.distill.dev.yaml").read_text(), (
        "run `make crds`"
    )


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("replicas=0", "replicas"),
        ("logLevel=chatty", "logLevel"),
        ("watchNamespaces[0]=Not_A_Namespace", "watchNamespaces.0"),
        ("prometheusRule.noProgress.window=soon", "prometheusRule.noProgress.window"),
        ("imageTag=latest", "imageTag"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(run_helm, flag: str, field: str) -> None:
    result = run_helm("template", "x", str(CHART), "--set", flag, check=False)
    assert result.returncode != 0
    assert field in result.stderr


def _render_notes(run_helm, tmp_path, *values: str) -> str:
    """templates/NOTES.txt as `helm install` would print it (`helm template` skips NOTES): a copy
    of the chart renders it into a ConfigMap with `tpl`, in the same context."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "notes.txt") . | quote }}}\n'
    )
    out = run_helm(
        "template", "distill", str(chart), "--show-only", "templates/zz-notes.yaml", *values
    )
    return yaml.safe_load(out.stdout)["data"]["notes"]


def test_notes_say_how_to_submit_and_watch_a_job(run_helm, tmp_path) -> None:
    notes = _render_notes(run_helm, tmp_path)
    assert "kubectl apply -f examples/math-distill.yaml" in notes
    assert "kubectl get distilljobs -w" in notes
    assert 'dashboard "Distillation"' in notes
    assert "jobMonitoring.podMonitor.enabled=true" in notes  # monitoring is off by default
    full = _render_notes(run_helm, tmp_path / "full", "--values", str(FULL_VALUES))
    assert "watching namespace(s) ml-research, ml-prod." in full
    assert "jobMonitoring.podMonitor.enabled=true" not in full


def _job_pod_args(container: dict[str, Any]) -> dict[str, str]:
    args = [
        a
        for a in container["args"]
        if a.startswith(("--job-", "--no-network", "--dashboard-", "--metrics-peers"))
    ]
    return dict([*a.split("=", 1), ""][:2] for a in args)


def test_job_pod_options_reach_the_operator(render) -> None:
    """The operator's own CLI parses what the chart passes (same flags, valid JSON peers)."""
    from distill_operator.__main__ import parse_args

    default = _job_pod_args(_operator_container(render()))
    assert "--job-run-as-user" not in default  # the operator's default, 1000
    parsed = parse_args([f"{k}={v}" for k, v in default.items()])
    assert parsed.job_run_as_user == 1000 and parsed.network_policy is True
    kuberay = {"app.kubernetes.io/name": "kuberay-operator"}
    assert parsed.dashboard_peers == (
        {"namespaceSelector": {}, "podSelector": {"matchLabels": kuberay}},
    )
    operator_pods, prometheus = parsed.metrics_peers
    assert operator_pods["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "distill-system"}
    }
    assert operator_pods["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert prometheus["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}

    openshift = render(
        "--set",
        "jobPods.runAsUser=null",
        "--set",
        "jobPods.networkPolicy.enabled=false",
        "--set",
        "podSecurityContext.runAsUser=null",
        "--set",
        "podSecurityContext.runAsGroup=null",
        "--set",
        "podSecurityContext.fsGroup=null",
    )
    args = _job_pod_args(_operator_container(openshift))
    assert args == {"--job-run-as-user": "none", "--no-network-policy": ""}
    assert parse_args(list(_operator_container(openshift)["args"])).job_run_as_user is None
    (deployment,) = find(openshift, "Deployment")
    context = deployment["spec"]["template"]["spec"]["securityContext"]
    assert context == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def test_probes_security_context_and_disruption_budget_are_values(render) -> None:
    full = render("--values", str(FULL_VALUES))
    container = _operator_container(full)
    assert container["livenessProbe"]["failureThreshold"] == 5
    assert container["readinessProbe"]["periodSeconds"] == 5
    (deployment,) = find(full, "Deployment")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 20001
    (budget,) = find(full, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert find(render(), "PodDisruptionBudget") == []  # one replica: a budget would block drains


def test_chart_works_as_a_dependency_with_global_values(run_helm, tmp_path) -> None:
    """A parent chart hands `global` to every subchart; the values schema must accept it."""
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "distill-operator")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: platform\nversion: 1.0.0\n"
        "dependencies:\n  - name: distill-operator\n    version: '>=0.0.0'\n"
    )
    (parent / "values.yaml").write_text(
        "global:\n  imageRegistry: registry.example.com\n  imagePullSecrets: [regcred]\n"
        "distill-operator:\n  replicas: 2\n"
    )
    run_helm("lint", "--strict", str(parent))
    out = run_helm(
        "template",
        "platform",
        str(parent),
        "--namespace",
        "platform",
        "--set",
        "global.storageClass=fast",
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc]
    assert find(objects, "PodDisruptionBudget")  # the parent's values reached the subchart
    for obj in objects:
        if not obj["apiVersion"].startswith("kopf.dev/"):  # kopf's peering: a CRD of its own
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
