"""The KubeRay RayJob that runs the trainer: one head (the driver) and one worker group per role.

Worker groups are named after the Ray custom resource each pod advertises (`rollout`, `actor`,
`teacher` when the teacher's KL enters the advantage, `critic` for gae); the trainer places its
role actors by requesting those resources. They are declared in the group-level `resources` map,
which KubeRay turns into `--resources='{"rollout":1}'` (updateRayStartParamsResources); a
hand-written rayStartParams string would have to survive its quote trimming (getResourcesMap).
Every group has a fixed size (min = max = replicas): training needs all of them at once,
autoscaling would only add waiting. A rollout pod gets gpusPerReplica GPUs and runs
gpusPerReplica / tensorParallelSize vLLM engines; the trainer reads that split from the job spec
it is given, so nothing about placement is passed separately.

Kueue (spec.queueName): the RayJob carries the queue-name label and no `suspend`: Kueue's webhook
suspends it on creation and Kueue unsuspends it on admission (and suspends it again to preempt).

A RayJob created again for a job that already checkpointed (deleted by someone, or after a
preemption) resumes where the job stands: the trainer finds the newest committed checkpoint under
checkpoint.uri itself. The command names none: KubeRay runs the same entrypoint again after every
suspension and re-admission, so a `--resume-from` written at creation would go stale, and the
trainer would then fail on a pruned checkpoint or delete the newer ones as an abandoned history.
The Ray cluster requires a token for its dashboard and GCS (KubeRay's authOptions, Ray >= 2.52);
KubeRay hands the token to the head, workers and the submitter.
"""

from __future__ import annotations

from typing import Any

from distill_api import DistillJob
from distill_api.v1alpha1 import PodPlacement, WorkerGroup
from distill_operator.builders.configmap import JOB_FILE_DIR, JOB_FILE_PATH
from distill_operator.builders.grader import GRADER_PORT
from distill_operator.builders.labels import (
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    RAY_WORKER,
    RAYJOB,
    ROLE_LABEL,
    SUBMITTER,
    TRAINER,
    common_labels,
)
from distill_operator.builders.meta import owned_object
from distill_operator.builders.names import grader_url, rayjob_name, spec_configmap_name
from distill_operator.builders.options import DEFAULT_OPTIONS, BuildOptions
from distill_operator.builders.pods import (
    apply_pod_settings,
    container_security_context,
    home_env,
    pod_security_context,
    resource_requirements,
    writable_mounts,
    writable_volumes,
)
from distill_operator.builders.trainer_service import TRAINER_METRICS_PORT, TRAINER_PORT_NAME

# The ray pin in requirements/lock.txt (`make install`). The trainer image keeps the ray its vLLM
# base image was released with (trainer_image/Dockerfile), which may differ.
RAY_VERSION = "2.60.0"
OUTPUT_DIR = "/tmp/distill"
ENTRYPOINT = (
    f"python -m distill_trainer run {JOB_FILE_PATH} --backend ray "
    f"--metrics-port {TRAINER_METRICS_PORT} --output-dir {OUTPUT_DIR}"
)
# A failed run is reported as Failed rather than retried: the same entrypoint would most likely
# fail the same way, holding the GPUs again (a new RayJob resumes from the last checkpoint).
BACKOFF_LIMIT = 0
AUTH_OPTIONS = {"mode": "token"}
SUBMITTER_CPU = "500m"
SUBMITTER_MEMORY = "512Mi"
SPEC_VOLUME = "job-spec"
DASHBOARD_PORT = 8265
_HEAD_PORTS = [("gcs-server", 6379), ("dashboard", DASHBOARD_PORT), ("client", 10001)]
CHECKPOINT_VOLUME = "checkpoints"
# Roles that write checkpoints or the final model (the driver on the head, the actor and critic).
_CHECKPOINT_WRITERS = {"head", "actor", "critic"}


def role_groups(job: DistillJob) -> dict[str, WorkerGroup]:
    """The worker groups this job needs, by Ray custom resource name, in a fixed order."""
    resources = job.spec.resources
    groups: dict[str, WorkerGroup] = {"rollout": resources.rollout, "actor": resources.actor}
    if job.spec.needs_teacher:
        groups["teacher"] = resources.teacher
    if job.spec.needs_critic and resources.critic is not None:
        groups["critic"] = resources.critic
    return groups


def _secret_env(job: DistillJob) -> dict[str, Any]:
    checkpoint = job.spec.checkpoint
    if checkpoint is None or checkpoint.secret_ref is None:
        return {}
    return {"envFrom": [{"secretRef": {"name": checkpoint.secret_ref}}]}


def _checkpoint_volume(job: DistillJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The checkpoint PVC's volume and mount ([] and [] without checkpoint.volume)."""
    checkpoint = job.spec.checkpoint
    if checkpoint is None or checkpoint.volume is None:
        return [], []
    claim = checkpoint.volume
    mount: dict[str, Any] = {"name": CHECKPOINT_VOLUME, "mountPath": claim.mount_path}
    if claim.sub_path:
        mount["subPath"] = claim.sub_path
    volume = {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": claim.claim_name}}
    return [volume], [mount]


def _ray_template(
    job: DistillJob,
    role: str,
    labels: dict[str, str],
    container: dict[str, Any],
    options: BuildOptions,
    group: PodPlacement,
) -> dict[str, Any]:
    """A Ray node's pod: the job spec mounted read-only, writable /tmp and /dev/shm, the
    checkpoint volume where checkpoints are written, then the user's pod settings."""
    container.setdefault("env", []).extend(home_env())
    container.update(_secret_env(job))
    container["securityContext"] = container_security_context()
    volumes = [
        {"name": SPEC_VOLUME, "configMap": {"name": spec_configmap_name(job.metadata.name)}},
        *writable_volumes(shared_memory=True),
    ]
    container["volumeMounts"] = [
        {"name": SPEC_VOLUME, "mountPath": JOB_FILE_DIR, "readOnly": True},
        *writable_mounts(shared_memory=True),
    ]
    if role in _CHECKPOINT_WRITERS:
        claim_volumes, claim_mounts = _checkpoint_volume(job)
        volumes += claim_volumes
        container["volumeMounts"] += claim_mounts
    spec = {
        "securityContext": pod_security_context(options),
        "containers": [container],
        "volumes": volumes,
    }
    return apply_pod_settings(job, {"metadata": {"labels": labels}, "spec": spec}, group)


def build_head_group(job: DistillJob, options: BuildOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """The head runs only the driver (the training loop): no GPU, models live on the workers."""
    name, namespace, head = job.metadata.name, job.metadata.namespace, job.spec.resources.head
    head_ports = [*_HEAD_PORTS, (TRAINER_PORT_NAME, TRAINER_METRICS_PORT)]
    ports = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in head_ports]
    container = {
        "name": "ray-head",
        "image": job.spec.image,
        "ports": ports,
        "env": [
            {"name": "DISTILL_JOB_NAME", "value": name},
            {"name": "DISTILL_GRADER_URL", "value": grader_url(name, namespace, GRADER_PORT)},
        ],
        "resources": resource_requirements(head.cpu, head.memory),
    }
    # The trainer Service selects the head pod (the driver serves /metrics) by these labels.
    labels = common_labels(name, TRAINER)
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0"},
        "template": _ray_template(job, "head", labels, container, options, head),
    }


def build_worker_group(
    job: DistillJob, role: str, group: WorkerGroup, options: BuildOptions = DEFAULT_OPTIONS
) -> dict[str, Any]:
    container = {
        "name": "ray-worker",
        "image": job.spec.image,
        "env": [{"name": "DISTILL_JOB_NAME", "value": job.metadata.name}],
        "resources": resource_requirements(group.cpu, group.memory, group.gpus_per_replica),
    }
    labels = {**common_labels(job.metadata.name, RAY_WORKER), ROLE_LABEL: role}
    return {
        "groupName": role,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        # The role's Ray custom resource; KubeRay still sets num-gpus from the GPU limit.
        "resources": {role: "1"},
        "template": _ray_template(job, role, labels, container, options, group),
    }


def build_submitter_template(
    job: DistillJob, options: BuildOptions = DEFAULT_OPTIONS
) -> dict[str, Any]:
    """KubeRay fills in the `ray job submit` command; we add the restricted security context.

    It goes where the head goes (both need no GPU).
    """
    container = {
        "name": "ray-job-submitter",
        "image": job.spec.image,
        "env": home_env(),
        "resources": resource_requirements(SUBMITTER_CPU, SUBMITTER_MEMORY),
        "securityContext": container_security_context(),
        "volumeMounts": writable_mounts(shared_memory=False),
    }
    template = {
        "metadata": {"labels": common_labels(job.metadata.name, SUBMITTER)},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security_context(options),
            "containers": [container],
            "volumes": writable_volumes(shared_memory=False),
        },
    }
    return apply_pod_settings(job, template, job.spec.resources.head)


def rayjob_mutable_spec(job: DistillJob) -> dict[str, Any]:
    """The RayJob spec fields that follow the DistillJob after creation (a merge patch).

    `suspend` only without Kueue, which owns it for queued jobs; every other field is fixed by
    the CRD's transition rules or by KubeRay once the cluster exists.
    """
    mutable: dict[str, Any] = {"ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished}
    if not job.spec.queue_name:
        mutable["suspend"] = job.spec.suspend
    return mutable


def build_rayjob(job: DistillJob, options: BuildOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    rayjob = owned_object(job, "ray.io/v1", "RayJob", rayjob_name(job.metadata.name), RAYJOB)
    labels = rayjob["metadata"]["labels"]
    if job.spec.queue_name:
        labels[KUEUE_QUEUE_LABEL] = job.spec.queue_name
    if job.spec.workload_priority_class:
        labels[KUEUE_PRIORITY_LABEL] = job.spec.workload_priority_class
    groups = role_groups(job).items()
    spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": "K8sJobMode",
        # Also what `suspend` needs, and what Kueue's webhook requires.
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished,
        "backoffLimit": BACKOFF_LIMIT,
        "submitterPodTemplate": build_submitter_template(job, options),
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "authOptions": dict(AUTH_OPTIONS),
            "headGroupSpec": build_head_group(job, options),
            "workerGroupSpecs": [build_worker_group(job, r, g, options) for r, g in groups],
        },
    }
    # Created suspended only when asked and not queued: a RayJob created suspended without Kueue
    # waits until spec.suspend goes back to false; a queued one is suspended by Kueue's webhook.
    if job.spec.suspend and not job.spec.queue_name:
        spec["suspend"] = True
    rayjob["spec"] = spec
    return rayjob
