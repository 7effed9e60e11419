"""kubectl 1.33 against the fake server: apply, get (server-side tables), describe with events."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import tool
from kubernetes.client import CoreV1Api

from fakekube import FakeKube

EXAMPLE = "examples/math-distill.yaml"


@pytest.fixture
def kubectl(fake_kube: FakeKube, tmp_path: Path, repo_root: Path):
    binary = tool("kubectl")
    env = {**os.environ, "KUBECONFIG": fake_kube.kubeconfig, "HOME": str(tmp_path)}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [binary, *args], env=env, cwd=repo_root, capture_output=True, text=True, timeout=60
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    return run


def test_apply_get_describe(kubectl, fake_kube: FakeKube) -> None:
    assert (
        kubectl("apply", "-f", EXAMPLE).stdout.strip()
        == "distilljob.distill.dev/math-distill created"
    )
    assert (
        kubectl("apply", "-f", EXAMPLE).stdout.strip()
        == "distilljob.distill.dev/math-distill unchanged"
    )
    job = fake_kube.get("distill.dev", "v1alpha1", "distilljobs", "default", "math-distill")
    assert "kubectl.kubernetes.io/last-applied-configuration" in job["metadata"]["annotations"]
    status = {"phase": "Running", "step": 7, "reward": 0.5, "klPerToken": 0.01}
    with fake_kube.api_client() as api:
        from kubernetes.client import CustomObjectsApi

        CustomObjectsApi(api).patch_namespaced_custom_object_status(
            "distill.dev", "v1alpha1", "default", "distilljobs", "math-distill", {"status": status}
        )
        CoreV1Api(api).create_namespaced_event(
            "default",
            {
                "metadata": {"name": "math-distill.1"},
                "type": "Normal",
                "reason": "RayJobCreated",
                "message": "created RayJob math-distill",
                "count": 1,
                "involvedObject": {
                    "apiVersion": "distill.dev/v1alpha1",
                    "kind": "DistillJob",
                    "name": "math-distill",
                    "namespace": "default",
                    "uid": job["metadata"]["uid"],
                },
            },
        )
    header, row = kubectl("get", "dj").stdout.splitlines()
    columns = ["NAME", "PHASE", "QUEUE", "REASON", "STEP", "REWARD", "KL", "AGE"]
    assert header.split() == columns
    # QUEUE and REASON are empty cells (not queued, Running): kubectl prints nothing there.
    assert row.split()[:5] == ["math-distill", "Running", "7", "0.5", "0.01"]
    described = kubectl("describe", "dj", "math-distill").stdout
    assert "Kind:         DistillJob" in described
    assert "RayJobCreated" in described and "created RayJob math-distill" in described


def test_apply_changes_and_rejections(
    kubectl, fake_kube: FakeKube, tmp_path: Path, repo_root: Path
) -> None:
    job = yaml.safe_load((repo_root / EXAMPLE).read_text())
    kubectl("apply", "-f", EXAMPLE)
    job["spec"]["suspend"] = True
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(job))
    assert "configured" in kubectl("apply", "-f", str(changed)).stdout
    stored = fake_kube.get("distill.dev", "v1alpha1", "distilljobs", "default", "math-distill")
    assert stored["spec"]["suspend"] is True and stored["metadata"]["generation"] == 2
    job["spec"]["student"]["model"] = "other"
    changed.write_text(yaml.safe_dump(job))
    rejected = kubectl("apply", "-f", str(changed), check=False)
    assert rejected.returncode == 1
    assert 'spec.student: Invalid value: "object": student is immutable' in rejected.stderr
    job["spec"]["student"]["model"] = stored["spec"]["student"]["model"]
    job["spec"]["bogus"] = 1
    changed.write_text(yaml.safe_dump(job))
    unknown = kubectl("apply", "-f", str(changed), check=False)
    assert 'strict decoding error: unknown field "spec.bogus"' in unknown.stderr


def test_get_all_namespaces_and_delete(kubectl, fake_kube: FakeKube) -> None:
    kubectl("apply", "-f", EXAMPLE)
    lines = kubectl("get", "distilljobs", "-A").stdout.splitlines()
    assert lines[1].split()[:2] == ["default", "math-distill"]
    assert kubectl("delete", "dj", "math-distill").stdout.strip() == (
        'distilljob.distill.dev "math-distill" deleted'
    )
    assert (
        fake_kube.get("distill.dev", "v1alpha1", "distilljobs", "default", "math-distill") is None
    )
