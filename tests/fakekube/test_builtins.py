"""Built-in kinds: ObjectMeta checks, ConfigMap/Secret data, Service and Deployment rules."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from kubernetes.client import ApiClient, ApiException, AppsV1Api, CoreV1Api

from fakekube import FakeKube
from fakekube.sample import Widgets, status_of, widget


def deployment(name: str = "d", selector: str = "web", label: str = "web") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": selector}},
            "template": {
                "metadata": {"labels": {"app": label}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "grader:1.0",
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ]
                },
            },
        },
    }


def invalid_message(exc: pytest.ExceptionInfo[ApiException]) -> str:
    assert exc.value.status == 422, exc.value.body
    return status_of(exc)["message"]


def test_label_values_are_checked_for_every_kind(widgets: Widgets, core: CoreV1Api) -> None:
    long_value = "j" * 64
    body = widget("w")
    body["metadata"]["labels"] = {"distill.dev/job": long_value}
    with pytest.raises(ApiException) as exc:
        widgets.create(body)
    assert invalid_message(exc) == (
        f'Widget.example.dev "w" is invalid: metadata.labels: Invalid '
        f'value: "{long_value}": must be no more than 63 characters'
    )
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "c", "labels": {"a": 1}}}
        )
    assert exc.value.status == 400


def test_configmap_data_must_be_strings(core: CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"n": 1}})
    assert exc.value.status == 400 and "ConfigMap.data of type string" in status_of(exc)["message"]


def test_secret_string_data_is_stored_as_base64(core: CoreV1Api, kube: FakeKube) -> None:
    core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    stored = kube.get("", "v1", "secrets", "default", "s")
    assert stored["data"] == {"k": base64.b64encode(b"v").decode()} and "stringData" not in stored
    assert stored["type"] == "Opaque"


def test_service_defaults_and_stable_cluster_ip(core: CoreV1Api) -> None:
    created = core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "grader"},
            "spec": {"ports": [{"port": 8000}], "selector": {"a": "b"}},
        },
    )
    assert created.spec.type == "ClusterIP" and created.spec.cluster_ip.startswith("10.96.")
    assert (created.spec.ports[0].protocol, created.spec.ports[0].target_port) == ("TCP", 8000)
    body = {
        "metadata": {"name": "grader"},
        "spec": {"ports": [{"port": 9000}], "selector": {"a": "b"}},
    }
    replaced = core.replace_namespaced_service("grader", "default", body)  # no clusterIP sent
    assert replaced.spec.cluster_ip == created.spec.cluster_ip


def test_service_ports_need_names_when_several(core: CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service(
            "default",
            {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}, {"port": 2, "name": "b"}]}},
        )
    assert invalid_message(exc) == 'Service "s" is invalid: spec.ports[0].name: Required value'


def test_deployment_defaults_and_selector_rules(api: ApiClient) -> None:
    apps = AppsV1Api(api)
    with pytest.raises(ApiException) as exc:
        apps.create_namespaced_deployment("default", deployment(label="other"))
    assert "spec.template.metadata.labels: Invalid value" in invalid_message(exc)
    assert "`selector` does not match template `labels`" in invalid_message(exc)
    created = apps.create_namespaced_deployment("default", deployment())
    assert (created.spec.replicas, created.spec.strategy.type) == (1, "RollingUpdate")
    container = created.spec.template.spec.containers[0]
    assert (container.image_pull_policy, container.ports[0].protocol) == ("IfNotPresent", "TCP")
    again = apps.replace_namespaced_deployment("d", "default", deployment())  # defaults omitted
    assert again.metadata.generation == 1
    with pytest.raises(ApiException) as exc:
        apps.patch_namespaced_deployment(
            "d", "default", {"spec": {"selector": {"matchLabels": {"x": "y"}}}}
        )
    assert "spec.selector: Invalid value" in invalid_message(exc)


def test_container_port_names_are_iana_service_names(api: ApiClient) -> None:
    body = deployment()
    body["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] = "prometheus-metrics"
    with pytest.raises(ApiException) as exc:
        AppsV1Api(api).create_namespaced_deployment("default", body)
    assert invalid_message(exc).endswith(
        'spec.template.spec.containers[0].ports[0].name: Invalid value: "prometheus-metrics": '
        "must be no more than 15 characters"
    )


def test_pods_start_pending(core: CoreV1Api) -> None:
    spec = copy.deepcopy(deployment()["spec"]["template"]["spec"])
    created = core.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": spec})
    assert created.status.phase == "Pending" and created.spec.restart_policy == "Always"
