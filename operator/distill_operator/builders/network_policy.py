"""The `<job>-ray` NetworkPolicy: who may reach a job's Ray pods (head and workers).

Ray's dashboard on the head is also its job API: whoever reaches it can run code in the cluster.
Admitted: the job's own pods (Ray's traffic between its nodes, the submitter's `ray job submit`),
`dashboard_peers` on the dashboard port (KubeRay's operator reads the job status there), and
`metrics_peers` on the metrics ports only (the distill operator's progress scrape, Prometheus).
Together with the cluster's token (authOptions) a pod elsewhere gets neither a connection nor,
if a policy is not enforced by the network plugin, a working call.
"""

from __future__ import annotations

from typing import Any

from distill_api import DistillJob
from distill_operator.builders.labels import (
    COMPONENT_LABEL,
    JOB_LABEL,
    NETWORK_POLICY,
    RAY_WORKER,
    TRAINER,
)
from distill_operator.builders.meta import owned_object
from distill_operator.builders.names import network_policy_name
from distill_operator.builders.options import BuildOptions
from distill_operator.builders.rayjob import DASHBOARD_PORT
from distill_operator.builders.trainer_service import TRAINER_METRICS_PORT

RAY_METRICS_PORT = 8080  # KubeRay's default metrics-export-port on every Ray node


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"port": port, "protocol": "TCP"} for port in ports]


def build_network_policy(job: DistillJob, options: BuildOptions) -> dict[str, Any]:
    name = job.metadata.name
    policy = owned_object(
        job, "networking.k8s.io/v1", "NetworkPolicy", network_policy_name(name), NETWORK_POLICY
    )
    ray_pods = {
        "matchLabels": {JOB_LABEL: name},
        "matchExpressions": [
            {"key": COMPONENT_LABEL, "operator": "In", "values": [TRAINER, RAY_WORKER]}
        ],
    }
    own_pods = [{"podSelector": {"matchLabels": {JOB_LABEL: name}}}]
    policy["spec"] = {
        "podSelector": ray_pods,
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": own_pods},
            {"from": list(options.dashboard_peers), "ports": _tcp(DASHBOARD_PORT)},
            {
                "from": list(options.metrics_peers),
                "ports": _tcp(TRAINER_METRICS_PORT, RAY_METRICS_PORT),
            },
        ],
    }
    return policy
