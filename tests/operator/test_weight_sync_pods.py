"""What `rollout.weightSync: nccl` needs from the objects the operator builds: nothing new, and
these tests say why (the rendezvous and NCCL pick their ports at run time, between the pods)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from distill_api import load_job
from distill_operator.builders import BuildOptions, build_children
from distill_operator.builders.configmap import JOB_FILE_KEY

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "math-distill.yaml"


def _nccl_children() -> dict[str, dict]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["rollout"].update(engine="vllm", weightSync="nccl")
    doc["metadata"]["uid"] = "0f9b6a52-5a1e-4b8e-9d8c-1f2a3b4c5d6e"
    objs = build_children(load_job(doc), BuildOptions())
    return {o["kind"]: o for o in objs}


def test_nccl_pods_reach_each_other_on_every_port_with_gpus_and_shm() -> None:
    children = _nccl_children()
    own, *_ = children["NetworkPolicy"]["spec"]["ingress"]
    assert "ports" not in own  # the job's own pods: any port (TCPStore, NCCL sockets)
    groups = children["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    by_role = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in groups}
    for role in ("rollout", "actor"):
        container = by_role[role]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, role
        assert "/dev/shm" in [m["mountPath"] for m in container["volumeMounts"]], role


def test_the_trainer_reads_weight_sync_from_the_job_file() -> None:
    config = _nccl_children()["ConfigMap"]
    spec = json.loads(config["data"][JOB_FILE_KEY])["spec"]
    assert spec["rollout"]["weightSync"] == "nccl"
