"""Deterministic names of the objects a DistillJob owns.

A DistillJob name may be 63 characters and start with a digit; a Service name must be a DNS-1035
label (≤ 63, starts with a letter) and KubeRay rejects RayJob names over 47 characters (it derives
the RayCluster, its Services and the submitter Job from them). Long names are cut and given a short
hash of the full name, so two long names with the same prefix still get different children.
"""

from __future__ import annotations

import hashlib

SERVICE_NAME_MAX = 63
RAYJOB_NAME_MAX = 47
HASH_LEN = 6


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def dns1035_name(job_name: str, suffix: str = "", max_len: int = SERVICE_NAME_MAX) -> str:
    """`<job>[-<suffix>]`, or `<cut job>-<hash>[-<suffix>]` when that would exceed max_len.

    A leading digit gets a `dj-<hash>-` prefix (DNS-1035 labels start with a letter). The hash
    keeps it apart from the job a user names `dj-<job>`, which would own the same children.
    """
    base = job_name if job_name[0].isalpha() else f"dj-{_short_hash(job_name)}-{job_name}"
    tail = f"-{suffix}" if suffix else ""
    if len(base) + len(tail) <= max_len:
        return base + tail
    keep = max_len - len(tail) - HASH_LEN - 1
    return f"{base[:keep].rstrip('-')}-{_short_hash(job_name)}{tail}"


def rayjob_name(job_name: str) -> str:
    return dns1035_name(job_name, max_len=RAYJOB_NAME_MAX)


def spec_configmap_name(job_name: str) -> str:
    return dns1035_name(job_name, "spec")


def grader_name(job_name: str) -> str:
    """The grader Deployment and its Service share this name."""
    return dns1035_name(job_name, "grader")


def trainer_service_name(job_name: str) -> str:
    return dns1035_name(job_name, "trainer")


def network_policy_name(job_name: str) -> str:
    return dns1035_name(job_name, "ray")


def grader_url(job_name: str, namespace: str, port: int) -> str:
    return f"http://{grader_name(job_name)}.{namespace}.svc:{port}"
