"""Pieces every pod template shares: the restricted security context, the writable volumes, and
the user's pod settings (spec.pods, with a group's placement overrides).

Each container runs as non-root with a read-only root filesystem, so whatever a process writes goes
to an emptyDir: /tmp (Ray's session dir /tmp/ray, caches under HOME=/tmp/home, the trainer's
--output-dir) and /dev/shm (Ray's object store; the container runtime's default is only 64 MiB).
"""

from __future__ import annotations

import copy
from typing import Any

from distill_api import DistillJob
from distill_api.v1alpha1 import PodPlacement
from distill_operator.builders.options import BuildOptions

TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"
PLACEMENT_FIELDS = ("node_selector", "tolerations", "affinity", "priority_class_name")


def pod_security_context(options: BuildOptions) -> dict[str, Any]:
    ids = {}
    if options.run_as_user is not None:
        uid = options.run_as_user
        ids = {"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}
    return {"runAsNonRoot": True, **ids, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Meets the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def writable_volumes(shared_memory: bool) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    if shared_memory:
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
    return volumes


def writable_mounts(shared_memory: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if shared_memory:
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    return mounts


def home_env() -> list[dict[str, str]]:
    """HOME on the writable /tmp: Python, Hugging Face and Triton write caches under it."""
    return [{"name": "HOME", "value": "/tmp/home"}]


def resource_requirements(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS: training pods should be the last evicted)."""
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def placement(job: DistillJob, group: PodPlacement | None) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity, priorityClassName: the group's where set, else the
    job-wide spec.pods value (a group's value replaces, it is not merged)."""
    pods = job.spec.pods
    fields: dict[str, Any] = {}
    for name in PLACEMENT_FIELDS:
        value = getattr(group, name, None) if group is not None else None
        if value is None and pods is not None:
            value = getattr(pods, name)
        if value is not None:
            fields[PodPlacement.model_fields[name].alias or name] = value
    return fields


def _extend_container(container: dict[str, Any], job: DistillJob) -> None:
    pods = job.spec.pods
    if pods is None:
        return
    own = {e["name"] for e in container.get("env", [])}
    extra_env = [e for e in pods.env or [] if e.get("name") not in own]
    if extra_env:
        container["env"] = [*container.get("env", []), *extra_env]
    if pods.env_from:
        container["envFrom"] = [*container.get("envFrom", []), *pods.env_from]
    if pods.volume_mounts:
        container["volumeMounts"] = [*container.get("volumeMounts", []), *pods.volume_mounts]


def apply_pod_settings(
    job: DistillJob, template: dict[str, Any], group: PodPlacement | None
) -> dict[str, Any]:
    """Add the user's pod settings to a built pod template (in place; returned for chaining).

    The operator's own labels, env names and volumes win over the user's: selectors, the job
    spec mount and the writable directories must stay what the builders made them.
    """
    spec = template["spec"]
    spec.update(placement(job, group))
    pods = job.spec.pods
    if pods is None:
        return template
    meta = template.setdefault("metadata", {})
    if pods.labels:
        meta["labels"] = {**pods.labels, **meta.get("labels", {})}
    if pods.annotations:
        meta["annotations"] = {**pods.annotations, **meta.get("annotations", {})}
    if pods.image_pull_secrets:
        spec["imagePullSecrets"] = list(pods.image_pull_secrets)
    if pods.service_account_name:
        spec["serviceAccountName"] = pods.service_account_name
    if pods.volumes:
        spec["volumes"] = [*spec.get("volumes", []), *pods.volumes]
    for container in spec["containers"]:
        _extend_container(container, job)
    return template


# Pod-spec keys apply_pod_settings sets only when the spec asks for them.
OPTIONAL_POD_KEYS = (
    *(PodPlacement.model_fields[name].alias or name for name in PLACEMENT_FIELDS),
    "imagePullSecrets",
    "serviceAccountName",
)


def with_unset_pod_keys_removed(workload: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that brings an existing Deployment to `workload`: a merge patch keeps every
    key it does not name, so a nodeSelector (say) taken out of the spec would stay on the pods;
    each optional pod-spec key `workload` leaves out is named as null, which deletes it."""
    patch = copy.deepcopy(workload)
    pod_spec = patch["spec"]["template"]["spec"]
    for key in OPTIONAL_POD_KEYS:
        pod_spec.setdefault(key, None)
    return patch
