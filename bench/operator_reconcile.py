"""Operator benchmark: how fast DistillJobs become RayJobs, and what the operator costs.

Starts the fake API server (tests/fakekube) and the real operator process against it, creates
--jobs DistillJobs and measures for each the time from its create request to the RayJob's ADDED
event on a watch; samples the operator's RSS and CPU time from /proc meanwhile. Two runs, each
with a fresh server and operator: a burst (all jobs at once, the worst case for queueing) and a
paced run (--rate jobs per second, the latency of one job on a busy operator).

    .venv/bin/python bench/operator_reconcile.py [--jobs 500] [--rate 10]
        [--out bench/results/operator.json]

Numbers depend on the machine (and on anything else running there): the result file records
the CPU count and versions next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakekube import FakeKube  # noqa: E402  (a test helper, importable once tests/ is on the path)

NS = "default"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def upstream_schemas() -> Path:
    """The vendored upstream CRDs (third_party/crd-schemas, see its README)."""
    return REPO / "third_party" / "crd-schemas"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_operator(kubeconfig: str, liveness_port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "distill_operator",
        "--standalone",
        "--all-namespaces",
        "--liveness-port",
        str(liveness_port),
        "--metrics-port",
        "0",
        "--log-format",
        "json",
    ]
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the operator did not answer its liveness probe within 60 s")


def watch_rayjobs(api: kubernetes.client.ApiClient, seen: dict[str, float], stop: threading.Event):
    """Record when each RayJob's ADDED event arrives."""
    custom = kubernetes.client.CustomObjectsApi(api)
    watch = kubernetes.watch.Watch()
    for event in watch.stream(
        custom.list_namespaced_custom_object, "ray.io", "v1", NS, "rayjobs", timeout_seconds=600
    ):
        if event["type"] == "ADDED":
            seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())
        if stop.is_set():
            watch.stop()


def sample_process(pid: int, samples: list[float], stop: threading.Event) -> None:
    while not stop.wait(0.1):
        samples.append(rss_mib(pid))


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def run(jobs: int, rate: float) -> dict[str, Any]:
    """One server, one operator, `jobs` DistillJobs created `rate` per second (0: at once)."""
    crds = [
        REPO / "crds" / "distilljobs.distill.dev.yaml",
        upstream_schemas() / "ray.io_rayjobs.yaml",
    ]
    template = yaml.safe_load((REPO / "examples" / "math-distill.yaml").read_text())
    with FakeKube(crds=crds) as kube:
        operator = start_operator(kube.kubeconfig, liveness_port=free_port())
        try:
            idle_rss = rss_mib(operator.pid)
            api = kube.api_client()
            custom = kubernetes.client.CustomObjectsApi(api)
            seen: dict[str, float] = {}
            stop = threading.Event()
            rss: list[float] = []
            threading.Thread(target=watch_rayjobs, args=(api, seen, stop), daemon=True).start()
            threading.Thread(
                target=sample_process, args=(operator.pid, rss, stop), daemon=True
            ).start()
            cpu_before, sent = cpu_seconds(operator.pid), {}
            started = time.monotonic()
            for index in range(jobs):
                if rate:
                    time.sleep(max(0.0, started + index / rate - time.monotonic()))
                body = {**template, "metadata": {"name": f"bench-{index:04d}"}}
                sent[body["metadata"]["name"]] = time.monotonic()
                custom.create_namespaced_custom_object(
                    "distill.dev", "v1alpha1", NS, "distilljobs", body
                )
            submitted = time.monotonic() - started
            kube.wait_for(lambda: len(seen) >= jobs, timeout=600, interval=0.1)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(operator.pid) - cpu_before
            stop.set()
        finally:
            operator.terminate()
            operator.wait(timeout=30)
    latencies = [seen[name] - t for name, t in sent.items()]
    return {
        "jobs": jobs,
        "rate_jobs_per_second": rate or "burst",
        "submit_seconds": round(submitted, 3),
        "all_rayjobs_seconds": round(elapsed, 3),
        "throughput_jobs_per_second": round(jobs / elapsed, 1),
        "create_to_rayjob_seconds": {
            "p50": round(percentile(latencies, 50), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(max(latencies), 3),
        },
        "operator_rss_mib": {"idle": round(idle_rss, 1), "peak": round(max(rss or [idle_rss]), 1)},
        "operator_cpu_seconds": round(cpu, 2),
    }


def environment() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kopf": kopf.__version__,
        "kubernetes_client": kubernetes.__version__,
        "api_server": "tests/fakekube, in the benchmark process on the same machine",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10.0, help="jobs/s of the paced run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator.json")
    args = parser.parse_args()
    result = {
        "burst": run(args.jobs, rate=0),
        "paced": run(args.jobs, rate=args.rate),
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
