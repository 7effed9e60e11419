"""The `<job>-trainer` Service: a stable address for the trainer's Prometheus metrics.

It selects the Ray head pod (the driver runs there) by the labels the head template carries; the
operator's progress timer and a ServiceMonitor both scrape it.
"""

from __future__ import annotations

from typing import Any

from distill_api import DistillJob
from distill_operator.builders.labels import TRAINER, selector_labels
from distill_operator.builders.meta import owned_object
from distill_operator.builders.names import trainer_service_name

TRAINER_METRICS_PORT = 9400
# The head container's port name. Not "metrics": KubeRay takes a port of that name for Ray's own
# metrics export port, which would then collide with the trainer's server.
TRAINER_PORT_NAME = "trainer-metrics"


def build_trainer_service(job: DistillJob) -> dict[str, Any]:
    name = job.metadata.name
    svc = owned_object(job, "v1", "Service", trainer_service_name(name), TRAINER)
    svc["spec"] = {
        "type": "ClusterIP",
        "selector": selector_labels(name, TRAINER),
        "ports": [
            {
                "name": "metrics",
                "port": TRAINER_METRICS_PORT,
                "targetPort": TRAINER_PORT_NAME,
                "protocol": "TCP",
            }
        ],
    }
    return svc
