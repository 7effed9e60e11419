"""The `<job>-spec` ConfigMap: the validated DistillJob as JSON, the trainer's only input.

Mounted read-only at /etc/distill/job.json in the Ray pods (see rayjob.py).
"""

from __future__ import annotations

import json
from typing import Any

from distill_api import DistillJob
from distill_operator.builders.labels import SPEC
from distill_operator.builders.meta import owned_object
from distill_operator.builders.names import spec_configmap_name

JOB_FILE_KEY = "job.json"
JOB_FILE_DIR = "/etc/distill"
JOB_FILE_PATH = f"{JOB_FILE_DIR}/{JOB_FILE_KEY}"


def job_document(job: DistillJob) -> dict[str, Any]:
    """The DistillJob with defaults filled in, metadata reduced to name/namespace/uid, no status."""
    doc = job.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
    extra = job.metadata.model_extra or {}
    doc["metadata"] = {
        "name": job.metadata.name,
        "namespace": job.metadata.namespace,
        **({"uid": extra["uid"]} if "uid" in extra else {}),
    }
    return doc


def build_spec_configmap(job: DistillJob) -> dict[str, Any]:
    cm = owned_object(job, "v1", "ConfigMap", spec_configmap_name(job.metadata.name), SPEC)
    cm["data"] = {JOB_FILE_KEY: json.dumps(job_document(job), indent=2, sort_keys=True) + "\n"}
    return cm
