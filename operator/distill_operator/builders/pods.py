"""Pieces every pod template shares: the restricted security context and the writable volumes.

Each container runs as non-root with a read-only root filesystem, so whatever a process writes goes
to an emptyDir: /tmp (Ray's session dir /tmp/ray, caches under HOME=/tmp/home, the trainer's
--output-dir) and /dev/shm (Ray's object store; the container runtime's default is only 64 MiB).
"""

from __future__ import annotations

from typing import Any

RUN_AS_USER = 1000  # the `ray` user of the rayproject images, which our trainer image keeps
TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


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
