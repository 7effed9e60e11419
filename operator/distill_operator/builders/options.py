"""What the cluster, not the job, decides about the pods a DistillJob runs (operator options).

The chart sets them (values `jobPods.*`); the builders take them as an argument, so they stay pure.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RUN_AS_USER = 1000  # the `ray` user of the rayproject images, which our trainer image keeps
# KubeRay's operator reads the job status from the head's dashboard (its Helm chart labels it so).
KUBERAY_OPERATOR_PEER: dict[str, Any] = {
    "namespaceSelector": {},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
}
ANY_NAMESPACE_PEER: dict[str, Any] = {"namespaceSelector": {}}


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """run_as_user None: no runAsUser/runAsGroup/fsGroup, for platforms that assign them
    (OpenShift's restricted SCC refuses pods that set ids outside the namespace's range).

    network_policy: a NetworkPolicy in front of each job's Ray pods; `dashboard_peers` may also
    reach the Ray dashboard (job API), `metrics_peers` only the metrics ports (the operator's
    progress scrape and Prometheus). Peers are NetworkPolicyPeer objects.
    """

    run_as_user: int | None = RUN_AS_USER
    network_policy: bool = True
    dashboard_peers: tuple[dict[str, Any], ...] = (KUBERAY_OPERATOR_PEER,)
    metrics_peers: tuple[dict[str, Any], ...] = (ANY_NAMESPACE_PEER,)


DEFAULT_OPTIONS = BuildOptions()
