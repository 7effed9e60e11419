"""ObjectMeta for owned objects: name, namespace, explicit labels and the DistillJob as owner."""

from __future__ import annotations

from typing import Any

import kopf

from distill_api import API_VERSION, KIND, DistillJob
from distill_operator.builders.labels import common_labels


def owner_body(job: DistillJob) -> dict[str, Any]:
    """The minimal DistillJob body kopf needs to build an ownerReference or post an Event."""
    uid = (job.metadata.model_extra or {}).get("uid")
    if not uid:
        raise ValueError("metadata.uid is required: owned objects point at their DistillJob by uid")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace, "uid": uid},
    }


def owned_object(
    job: DistillJob, api_version: str, kind: str, name: str, component: str
) -> dict[str, Any]:
    """The skeleton of an object owned (and garbage-collected with) the DistillJob."""
    obj: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": job.metadata.namespace,
            "labels": common_labels(job.metadata.name, component),
        },
    }
    kopf.append_owner_reference(obj, owner=owner_body(job))
    return obj
