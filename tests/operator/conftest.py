"""Fixtures for the operator tests: DistillJob bodies as the API server hands them to kopf,
validators for what the builders emit, and the real operator process against FakeKube (`cluster`:
one fake API server and one operator shared by the integration modules).

`pytest tests/operator --update-golden` rewrites tests/operator/golden/*.yaml from the builders
(review the diff by hand before committing it).

A plain JSON-schema validator accepts unknown keys (the CRD schemas do not set
additionalProperties: false), so `unknown_fields` walks an object against the schema the way the
API server prunes, and reports every key that would be silently dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import yaml
from fakekube import FakeKube
from fakekube.fixtures import crd_paths, kueue_workload_crd
from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
FIXED_UID = "0b7a3c1e-5d2f-4e8a-9c61-2f0d8e4b7a15"
KUBERNETES_VERSION = "1.33"

Body = dict[str, Any]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/operator/golden/*.yaml from the builders instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def _example_body(file: str, namespace: str = "research", **overrides: Any) -> Body:
    """An example with the metadata the API server adds; `a__b=v` overrides body["a"]["b"]."""
    body = yaml.safe_load((EXAMPLES / file).read_text())
    body["metadata"].update(namespace=namespace, uid=FIXED_UID, generation=1)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = body
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = copy.deepcopy(value)
    return body


@pytest.fixture
def example_body() -> Callable[..., Body]:
    return _example_body


@cache
def _crd_schema(path: Path, version: str) -> dict[str, Any]:
    crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # 1.4 MB: the C loader is 10x faster
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    return served[version]["schema"]["openAPIV3Schema"]


def unknown_fields(obj: Any, schema: dict[str, Any], path: str) -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, f"{path}.{key}")
            elif properties is not None or extra is False:
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


@pytest.fixture
def validate_rayjob(upstream_schemas: Path) -> Callable[[Body], None]:
    """Raise if a RayJob breaks KubeRay's v1 schema or has fields KubeRay would prune."""
    schema = _crd_schema(upstream_schemas / "ray.io_rayjobs.yaml", "v1")

    def validate(rayjob: Body) -> None:
        jsonschema.Draft4Validator(schema).validate(rayjob)
        dropped = unknown_fields(rayjob["spec"], schema["properties"]["spec"], "spec")
        assert not dropped, f"fields not in KubeRay's RayJob schema: {dropped}"

    return validate


@pytest.fixture
def validate_builtin() -> Callable[[Body], None]:
    """Strict validation (unknown fields are errors) against Kubernetes' OpenAPI schema."""
    return lambda obj: kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


# -- the real operator process against FakeKube ---------------------------------------------------

TRAINER_GAUGES = (
    "training_step",
    "training_total_steps",
    "training_epoch",
    "training_step_reward",
    "val_reward",
    "distill_kl_per_token",
    "distill_kl_coef",
    "training_last_checkpoint_step",
    "training_final_model_saved",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TrainerMetrics:
    """A real prometheus_client exporter standing in for the trainers of several jobs.

    Served at /<job>/metrics; a job whose gauges were never set answers 503, like a trainer that
    is not up yet.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {
            name: Gauge(name, name, ["distilljob"], registry=self.registry)
            for name in TRAINER_GAUGES
        }
        self.timing = Gauge("timing_seconds", "t", ["distilljob", "phase"], registry=self.registry)
        self.jobs: set[str] = set()
        exporter = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            job = environ["PATH_INFO"].strip("/").split("/")[0]
            if job not in self.jobs:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"trainer not started"]
            return exporter(environ, start_response)

        self.server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url_template = f"http://127.0.0.1:{self.server.server_port}/{{name}}/metrics"

    def set(self, job: str, **values: float) -> None:
        for name, value in values.items():
            self.gauges[name].labels(job).set(value)
        self.timing.labels(job, "step").set(1.5)
        self.jobs.add(job)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@dataclasses.dataclass
class OperatorProcess:
    """`python -m distill_operator` as a child process, with its ports and log file."""

    process: subprocess.Popen[bytes]
    liveness_port: int
    metrics_port: int
    log_path: Path

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:  # not listening yet
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the operator's /metrics (0.0 when absent)."""
        _, text = self.get(self.metrics_port, "/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return 0.0

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the OOM killer strikes."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_operator(kubeconfig: str, log_dir: Path, *extra: str) -> OperatorProcess:
    """Start the operator and wait (deadline 60 s) until its liveness probe answers.

    Standalone unless `extra` asks for --peering.
    """
    liveness, metrics = free_port(), free_port()
    log_path = log_dir / f"operator-{liveness}.log"
    peering = [] if "--peering" in extra else ["--standalone"]
    ports = ["--liveness-port", str(liveness), "--metrics-port", str(metrics)]
    command = [sys.executable, "-m", "distill_operator", *peering, *ports, *extra]
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    operator = OperatorProcess(process, liveness, metrics, log_path)
    deadline = time.monotonic() + 60
    while operator.get(liveness, "/healthz")[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            operator.stop()
            raise RuntimeError(f"operator did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)
    return operator


@pytest.fixture(scope="session")
def trainer_metrics() -> Iterator[TrainerMetrics]:
    trainers = TrainerMetrics()
    yield trainers
    trainers.server.shutdown()


def _operator_starter(log_dir: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(kubeconfig: str, *extra: str) -> OperatorProcess:
        started.append(start_operator(kubeconfig, log_dir, *extra))
        return started[-1]

    yield start
    for operator in started:
        operator.stop()


@pytest.fixture
def operator_factory(tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """start(kubeconfig, *args) -> a running operator, stopped when the test ends."""
    yield from _operator_starter(tmp_path)


# -- one API server and one operator for the integration modules -----------------------------

NS = "default"
DJ = ("distill.dev", "v1alpha1", "distilljobs")
RAYJOB = ("ray.io", "v1", "rayjobs")
KINDS = {
    "ConfigMap": ("", "v1", "configmaps"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "RayJob": RAYJOB,
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}


class Cluster:
    """What a user (kubectl) and KubeRay would do, through the kubernetes client."""

    def __init__(self, kube: FakeKube, operator: OperatorProcess | None = None) -> None:
        self.kube = kube
        self.operator = operator
        self.custom = kubernetes.client.CustomObjectsApi(kube.api_client())

    def create_job(self, body: Body) -> Body:
        body["metadata"].pop("uid", None)
        body["metadata"].pop("generation", None)
        return self.custom.create_namespaced_custom_object(*DJ[:2], NS, DJ[2], body)

    def new_job(self, name: str, file: str = "math-distill.yaml", **overrides: Any) -> Body:
        """Create a DistillJob from an example and wait until its RayJob exists."""
        created = self.create_job(_example_body(file, NS, metadata__name=name, **overrides))
        self.kube.wait_for(lambda: self.child("RayJob", name), timeout=30)
        return created

    def job(self, name: str) -> Body:
        return self.kube.get(*DJ, NS, name) or {}

    def patch_spec(self, name: str, spec: Body) -> Body:
        return self.custom.patch_namespaced_custom_object(*DJ[:2], NS, DJ[2], name, {"spec": spec})

    def delete_job(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*DJ[:2], NS, DJ[2], name)

    def kuberay_reports(self, name: str, **status: Any) -> None:
        """Write the RayJob's status as KubeRay would."""
        self.custom.patch_namespaced_custom_object_status(
            *RAYJOB[:2], NS, RAYJOB[2], name, {"status": status}
        )

    def kueue_sets(self, name: str, suspend: bool) -> None:
        """Suspend or admit a queued RayJob as Kueue would."""
        patch = {"spec": {"suspend": suspend}}
        self.custom.patch_namespaced_custom_object(*RAYJOB[:2], NS, RAYJOB[2], name, patch)

    def child(self, kind: str, name: str) -> Body | None:
        return self.kube.get(*KINDS[kind], NS, name)

    def delete_child(self, kind: str, name: str) -> None:
        """Delete an owned object as a user (or a cleanup script) would."""
        group, version, plural = KINDS[kind]
        api = self.kube.api_client()
        path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        api.call_api(
            f"{path}/namespaces/{NS}/{plural}/{name}", "DELETE", auth_settings=["BearerToken"]
        )

    def kueue_workload(self, rayjob_name: str, **status: Any) -> None:
        """Create or update the Workload Kueue keeps for a queued RayJob, with `status`."""
        rayjob = self.child("RayJob", rayjob_name) or {}
        owner = {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "name": rayjob_name,
            "uid": rayjob["metadata"]["uid"],
            "controller": True,
        }
        name = f"rayjob-{rayjob_name}"
        workloads = ("kueue.x-k8s.io", "v1beta2", NS, "workloads")
        if self.kube.get(*workloads[:2], "workloads", NS, name) is None:
            body = {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "Workload",
                "metadata": {"name": name, "ownerReferences": [owner]},
                "spec": {"queueName": "team-math"},
            }
            self.custom.create_namespaced_custom_object(*workloads, body)
        self.custom.patch_namespaced_custom_object_status(*workloads, name, {"status": status})

    def wait_job(self, name: str, check: Callable[[Body], Any], timeout: float = 20) -> Body:
        """Wait until check(status) is truthy; returns the status."""
        return self.kube.wait_for(
            lambda: check(status := self.job(name).get("status") or {}) and status, timeout
        )

    def wait_phase(self, name: str, phase: str) -> Body:
        return self.wait_job(name, lambda s: s.get("phase") == phase)

    def events(self, name: str) -> list[Body]:
        return [
            e
            for e in self.kube.list("", "v1", "events", NS)
            if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "DistillJob"
        ]

    def wait_event(self, name: str, reason: str) -> Body:
        return self.kube.wait_for(
            lambda: next((e for e in self.events(name) if e["reason"] == reason), None)
        )


def condition(status: Body, condition_type: str) -> Body:
    """One condition of a DistillJob status ({} when absent)."""
    return next((c for c in status.get("conditions", []) if c["type"] == condition_type), {})


@pytest.fixture
def conditions() -> Callable[[Body, str], Body]:
    return condition


@pytest.fixture(scope="session")
def live_kube(repo_root: Path, upstream_schemas: Path) -> Iterator[FakeKube]:
    """FakeKube validating DistillJobs with the generated CRD and RayJobs with KubeRay's; Kueue's
    Workloads are served too."""
    crds = [*crd_paths(repo_root, upstream_schemas), kueue_workload_crd()]
    with FakeKube(crds=crds) as server:
        yield server


@pytest.fixture(scope="session")
def cluster(
    live_kube: FakeKube, trainer_metrics: TrainerMetrics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The shared operator (progress every 0.3 s from `trainer_metrics`) on `live_kube`."""
    starter = _operator_starter(tmp_path_factory.mktemp("operator-logs"))
    start = next(starter)
    args = ["--progress-interval", "0.3", "--progress-url-template", trainer_metrics.url_template]
    yield Cluster(live_kube, start(live_kube.kubeconfig, *args))
    next(starter, None)
