"""kopf runs against the fake server: discovery, list/watch, patches, status, finalizers, events."""

from __future__ import annotations

import textwrap
from pathlib import Path

from kopf.testing import KopfRunner
from kubernetes.client import CoreV1Api, CustomObjectsApi

from fakekube import FakeKube

OPERATOR = textwrap.dedent("""
    import kopf

    @kopf.on.create("distill.dev", "v1alpha1", "distilljobs")
    def job_create(body, spec, patch, **_):
        patch.status["phase"] = "Running"
        patch.status["step"] = spec["training"]["batchSize"]
        kopf.info(body, reason="Started", message="started")

    @kopf.on.delete("distill.dev", "v1alpha1", "distilljobs")
    def job_delete(name, **_):
        pass
""")
ARGS = ("distill.dev", "v1alpha1", "default", "distilljobs")  # CustomObjectsApi order
KEY = ("distill.dev", "v1alpha1", "distilljobs", "default")  # FakeKube.get order


def test_kopf_operator_reconciles_distilljobs(
    fake_kube_env: FakeKube, tmp_path: Path, repo_root: Path
) -> None:
    kube = fake_kube_env
    # Not operator.py: kopf puts the script's folder on sys.path, where that name would shadow
    # the standard library in every later subprocess handed sys.path (torch inductor's probe).
    operator = tmp_path / "distill_kopf_operator.py"
    operator.write_text(OPERATOR)
    job = {
        "apiVersion": "distill.dev/v1alpha1",
        "kind": "DistillJob",
        "metadata": {"name": "j"},
        "spec": {"student": {"model": "m"}, "data": {"train": "s3://b/t.parquet"}},
    }

    def phase() -> str | None:
        return ((kube.get(*KEY, "j") or {}).get("status") or {}).get("phase")

    with (
        kube.api_client() as api,
        KopfRunner(["run", "-A", "--standalone", str(operator)]) as runner,
    ):
        CustomObjectsApi(api).create_namespaced_custom_object(*ARGS, job)
        kube.wait_for(lambda: phase() == "Running")
        assert kube.get(*KEY, "j")["status"]["step"] == 64
        assert kube.get(*KEY, "j")["metadata"]["finalizers"] == [
            "kopf.zalando.org/KopfFinalizerMarker"
        ]
        [event] = kube.wait_for(
            lambda: (
                CoreV1Api(api)
                .list_namespaced_event(
                    "default", field_selector="involvedObject.name=j,involvedObject.kind=DistillJob"
                )
                .items
            )
        )
        assert (event.reason, event.message) == ("Started", "started")
        CustomObjectsApi(api).delete_namespaced_custom_object(*ARGS, "j")
        kube.wait_for(lambda: kube.get(*KEY, "j") is None)
    assert runner.exit_code == 0, runner.output
    verbs = {(r.verb, r.resource, r.subresource) for r in kube.requests}
    assert {
        ("list", "distilljobs", None),
        ("watch", "distilljobs", None),
        ("patch", "distilljobs", "status"),
        ("create", "events", None),
    } <= verbs
