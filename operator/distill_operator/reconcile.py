"""What every handler shares: reading a DistillJob body, and bringing its owned objects to the
built manifests (create, or patch back).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from distill_api import (
    DistillJob,
    DistillJobStatus,
    JobPhase,
    format_validation_error,
    load_job,
)
from distill_api.v1alpha1 import CheckpointStatus
from distill_operator.apply import Kube, OwnedByAnother
from distill_operator.builders import BuildOptions, build_children
from distill_operator.builders.grader import INVALID_SPEC, has_finished
from distill_operator.builders.pods import with_unset_pod_keys_removed
from distill_operator.builders.rayjob import rayjob_mutable_spec
from distill_operator.status import SPEC_VALID, set_condition


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read_job(body: Mapping[str, Any], patch: kopf.Patch) -> DistillJob:
    """Validate the body with the API model; a bad spec fails permanently, naming the field.

    Normally the API server's schema and CEL rules stop bad specs; this catches the ones that
    slip past (an older CRD, a disabled validation) with a Warning event and a status condition.
    """
    document = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}
    try:
        job = load_job(document)
    except ValidationError as error:
        message = format_validation_error(error)
        kopf.warn(body, reason="InvalidSpec", message=message)
        generation = body["metadata"].get("generation")
        patch.status.update(
            invalid_spec_status(body.get("status") or {}, message, generation, now())
        )
        raise kopf.PermanentError(f"invalid DistillJob: {message}") from error
    job.status = status_for_builders(body.get("status") or {})
    return job


_RUN_ENDS = (JobPhase.SUCCEEDED.value, JobPhase.FAILED.value)


def invalid_spec_status(
    status: Mapping[str, Any], message: str, generation: int | None, at: dt.datetime
) -> dict[str, Any]:
    """The status patch for a spec that fails validation: SpecValid False, and phase Failed
    with reason InvalidSpec. A job that already ran to an end (a stricter operator reading an
    old spec) keeps its outcome: as InvalidSpec it would count as never run, and fixing the
    spec would train it all over again."""
    conditions = status.get("conditions") or []
    fields: dict[str, Any] = {
        "conditions": set_condition(
            conditions, SPEC_VALID, False, INVALID_SPEC, message, at, generation
        )
    }
    ran_to_an_end = status.get("phase") in _RUN_ENDS and status.get("reason") != INVALID_SPEC
    if not ran_to_an_end:
        fields.update(phase=JobPhase.FAILED.value, reason=INVALID_SPEC)
    return fields


def status_for_builders(status: Mapping[str, Any]) -> DistillJobStatus | None:
    """What the builders read of a stored status: phase, reason and the last checkpoint."""
    phase = status.get("phase")
    if phase not in {p.value for p in JobPhase}:
        return None
    try:  # an unreadable record (written by an older operator) only loses the resume point
        checkpoint = CheckpointStatus.model_validate(status.get("lastCheckpoint"))
    except ValidationError:
        checkpoint = None
    return DistillJobStatus(
        phase=JobPhase(phase), reason=status.get("reason"), last_checkpoint=checkpoint
    )


def job_of(body: Mapping[str, Any]) -> DistillJob | None:
    """The body as a DistillJob with the status the builders read, None when it is invalid
    (the spec handlers report that)."""
    document = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}
    try:
        job = load_job(document)
    except ValidationError:
        return None
    job.status = status_for_builders(body.get("status") or {})
    return job


def update_patch(job: DistillJob, obj: dict[str, Any], finished: bool) -> dict[str, Any] | None:
    """The merge patch that brings an existing `obj` to the built one (None: `obj` itself); of
    a finished job's RayJob, only its TTL."""
    if obj["kind"] == "RayJob" and finished:
        return {"spec": {"ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished}}
    if obj["kind"] == "RayJob":
        return {"spec": rayjob_mutable_spec(job)}
    if obj["kind"] == "Deployment":
        return with_unset_pod_keys_removed(obj)
    return None


def ensure_children(
    job: DistillJob, kube: Kube, options: BuildOptions, logger: kopf.Logger
) -> list[str]:
    """Create every owned object, or bring it back to the built manifest; the created ones.

    An existing RayJob only gets its mutable fields patched: KubeRay owns the running cluster
    and rejects most changes to it. A finished job's RayJob is never created again, even when it
    is gone (that would run the whole training again); while it exists its TTL still follows the
    spec (KubeRay counts it from the job's end at every reconcile: a shorter one frees the
    finished cluster's GPUs now, a longer one keeps it for a look).
    """
    owner_uid = (job.metadata.model_extra or {})["uid"]
    finished = has_finished(job)
    created = []
    for obj in build_children(job, options):
        rerun = obj["kind"] == "RayJob" and finished  # never: it would train all over again
        try:
            outcome = kube.ensure(obj, owner_uid, update_patch(job, obj, finished), not rerun)
        except OwnedByAnother as error:
            # A namesake from a deleted DistillJob that the garbage collector has not removed yet.
            raise kopf.TemporaryError(str(error), delay=5) from error
        name = obj["metadata"]["name"]
        logger.info("%s %s/%s %s", obj["kind"], job.metadata.namespace, name, outcome)
        if outcome == "created":
            created.append(f"{obj['kind']} {name}")
    return created


def clear_invalid_spec(body: Mapping[str, Any], kube: Kube) -> None:
    """A spec fixed after an InvalidSpec: set SpecValid back to True.

    Phase and phase conditions are written only by `rayjob_status_changed` (a merge patch
    replaces the whole conditions list, so two writers would undo each other's changes). This
    is the one exception, written before the owned objects are ensured, so before any RayJob
    event of the fixed job can reach the watcher.
    """
    conditions = (body.get("status") or {}).get("conditions") or []
    if any(c.get("type") == SPEC_VALID and c.get("status") == "False" for c in conditions):
        generation = body["metadata"].get("generation")
        valid = set_condition(conditions, SPEC_VALID, True, "Validated", "", now(), generation)
        meta = body["metadata"]
        kube.patch_distilljob_status(meta["namespace"], meta["name"], {"conditions": valid})
