"""The chart grants exactly the API calls declared in distill_operator.rbac, in every install mode.

The declaration itself is checked against a running operator in test_rbac_live.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from chart.helpers import REPO_ROOT, find

from distill_operator.rbac import CLUSTER_SCOPED_RESOURCES, REQUIRED_PERMISSIONS

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)
USER_ROLES = ("distilljob-editor", "distilljob-viewer")


def operator_cluster_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in find(objects, "ClusterRole") if r["metadata"]["name"] not in USER_ROLES]


def _grants(rules: list[dict[str, Any]]) -> list[Grant]:
    return [
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def _declared(*, cluster_scoped: bool, peering: str | None) -> set[Grant]:
    """What REQUIRED_PERMISSIONS asks for, restricted to one scope and peering kind."""
    wanted_peering = {"cluster": "clusterkopfpeerings", "namespaced": "kopfpeerings"}.get(peering)
    grants = set()
    for permission in REQUIRED_PERMISSIONS:
        base = permission.resource.split("/")[0]
        if (base in CLUSTER_SCOPED_RESOURCES) != cluster_scoped:
            continue
        if permission.api_group == "kopf.dev" and base != wanted_peering:
            continue
        grants |= {(permission.api_group, permission.resource, v) for v in permission.verbs}
    return grants


@pytest.mark.parametrize("replicas", [1, 2])
def test_cluster_wide_install_grants_the_declaration(render, replicas: int) -> None:
    objects = render("--set", f"replicas={replicas}")
    (role,) = operator_cluster_roles(objects)
    grants = _grants(role["rules"])
    peering = "cluster" if replicas > 1 else None
    expected = _declared(cluster_scoped=False, peering=peering) | _declared(
        cluster_scoped=True, peering=peering
    )
    assert len(grants) == len(set(grants)), "duplicate rules"
    assert set(grants) == expected
    assert find(objects, "Role") == []


@pytest.mark.parametrize("replicas", [1, 2])
def test_namespaced_install_grants_roles_per_namespace(render, replicas: int) -> None:
    objects = render("--set", f"replicas={replicas}", "--set", "watchNamespaces={team-a,team-b}")
    peering = "namespaced" if replicas > 1 else None
    (cluster_role,) = operator_cluster_roles(objects)
    assert set(_grants(cluster_role["rules"])) == _declared(cluster_scoped=True, peering=None)
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert set(_grants(role["rules"])) == _declared(cluster_scoped=False, peering=peering)


def test_bindings_grant_the_roles_to_the_operator(render) -> None:
    objects = render("--set", "watchNamespaces={team-a}", "--set", "serviceAccount.name=op")
    (account,) = find(objects, "ServiceAccount")
    (deployment,) = find(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "op"
    subject = {
        "kind": "ServiceAccount",
        "name": "op",
        "namespace": account["metadata"]["namespace"],
    }
    for kind, role_kind in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")]:
        (binding,) = find(objects, kind)
        assert binding["subjects"] == [subject]
        assert binding["roleRef"]["kind"] == role_kind
        (role,) = find(objects, role_kind, binding["roleRef"]["name"])
        assert role["metadata"].get("namespace") == binding["metadata"].get("namespace")


def test_generated_chart_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "build_chart_assets.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_user_roles_aggregate_into_edit_and_view(render) -> None:
    objects = render()
    editor, viewer = (find(objects, "ClusterRole", name)[0] for name in USER_ROLES)
    aggregated = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in editor["metadata"]["labels"] if k.startswith(aggregated)} == {
        f"{aggregated}edit",
        f"{aggregated}admin",
    }
    assert {k for k in viewer["metadata"]["labels"] if k.startswith(aggregated)} == {
        f"{aggregated}view"
    }
    assert ("distill.dev", "distilljobs", "create") in _grants(editor["rules"])
    assert ("distill.dev", "distilljobs", "delete") in _grants(editor["rules"])
    viewer_verbs = {verb for _, _, verb in _grants(viewer["rules"])}
    assert viewer_verbs == {"get", "list", "watch"}
    assert not any(
        find(render("--set", "userRoles.create=false"), "ClusterRole", n) for n in USER_ROLES
    )
