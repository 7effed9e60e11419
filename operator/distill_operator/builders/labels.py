"""Labels on everything a DistillJob owns.

Written explicitly instead of copied from the DistillJob (what `kopf.adopt` would do): the owner's
labels may carry `kueue.x-k8s.io/queue-name`, which must reach the RayJob only (Kueue would
otherwise try to admit the grader Deployment too), and user labels must never leak into selectors.
"""

from __future__ import annotations

JOB_LABEL = "distill.dev/job"
COMPONENT_LABEL = "distill.dev/component"
ROLE_LABEL = "distill.dev/role"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # a WorkloadPriorityClass name

TRAINER = "trainer"  # the Ray head pod, where the driver (the training loop) runs
RAYJOB = "rayjob"  # the RayJob object itself; not "trainer", so no Service could select by it
GRADER = "grader"
RAY_WORKER = "ray-worker"
SUBMITTER = "submitter"
SPEC = "spec"
NETWORK_POLICY = "network-policy"


def selector_labels(job_name: str, component: str) -> dict[str, str]:
    """What a Service or Deployment selects on; never changes for a given job and component."""
    return {JOB_LABEL: job_name, COMPONENT_LABEL: component}


def common_labels(job_name: str, component: str) -> dict[str, str]:
    """Selector labels plus the recommended `app.kubernetes.io/*` set."""
    return {
        "app.kubernetes.io/name": "distill-operator",
        "app.kubernetes.io/instance": job_name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "distill-operator",
        "app.kubernetes.io/managed-by": "distill-operator",
        **selector_labels(job_name, component),
    }
