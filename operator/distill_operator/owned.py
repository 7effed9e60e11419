"""The watchers of what a DistillJob owns: its RayJob's status becomes the job's phase, an owned
object deleted by someone else is created again, and Kueue's Workload of a queued job explains
the wait (status.admission and an Event).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from distill_api import GROUP, KIND, JobPhase
from distill_operator import progress
from distill_operator.apply import Kube
from distill_operator.metrics import instrumented
from distill_operator.reconcile import ensure_children, job_of, now
from distill_operator.status import (
    PhaseReport,
    admission_message,
    changed_fields,
    phase_of,
    phase_reason,
    phase_status,
)

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayjobs"
# Owned kinds besides the RayJob whose deletion is noticed: (group, version, plural).
WATCHED_CHILDREN = [
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("networking.k8s.io", "v1", "networkpolicies"),
]
# Every owned kind, for the watches' server-side label selector.
OWNED_KINDS = [(RAY_GROUP, RAY_VERSION, RAY_PLURAL), *WATCHED_CHILDREN]
KUEUE_WORKLOADS = "workloads.kueue.x-k8s.io"  # whichever version the cluster's Kueue serves


def _owner_of(
    child: Mapping[str, Any], kind: str = KIND, group: str = GROUP
) -> Mapping[str, Any] | None:
    """The owner reference of `kind` (uid-checked later; a label alone could be forged)."""
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("apiVersion", "").startswith(f"{group}/"):
            return ref
    return None


def _live_owner(kube: Kube, child: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The DistillJob that owns `child`, if it still exists and is not being deleted."""
    owner = _owner_of(child)
    if owner is None:
        return None
    distilljob = kube.get_distilljob(child["metadata"]["namespace"], owner["name"])
    if distilljob is None or distilljob["metadata"]["uid"] != owner.get("uid"):
        return None  # the owner is gone (or was recreated): garbage collection handles this one
    if distilljob["metadata"].get("deletionTimestamp"):
        return None
    return distilljob


def _announce(distilljob: Mapping[str, Any], report: PhaseReport, new_phase: bool) -> None:
    """An Event named after the new phase, or after the new reason within the same phase
    (`RayJobInitializing`, `TrainerSubmitted`, `WaitingForAdmission`); failures are Warnings."""
    message = report.message or f"DistillJob is {report.phase.value} ({report.reason})"
    if report.phase == JobPhase.FAILED:
        kopf.warn(distilljob, reason=report.reason, message=message)
    else:
        reason = report.phase.value if new_phase else report.reason
        kopf.info(distilljob, reason=reason, message=message)


@instrumented("rayjob_status_changed")
def rayjob_status_changed(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    if type == "DELETED":
        child_deleted(body=body, type=type, memo=memo, logger=logger)
        return
    distilljob = _live_owner(memo.kube, body)
    if distilljob is None:
        return
    namespace, name = body["metadata"]["namespace"], distilljob["metadata"]["name"]
    previous = distilljob.get("status") or {}
    report = phase_of(body)
    generation = distilljob["metadata"].get("generation")
    fields = phase_status(report, previous, now(), generation)
    checkpoint = (distilljob.get("spec") or {}).get("checkpoint")
    if report.phase == JobPhase.SUCCEEDED and checkpoint and not previous.get("finalModel"):
        # The trainer exports the final model before it exits 0; its gauge saying so may come
        # too late for the last progress scrape.
        fields["finalModel"] = progress.final_model_uri(checkpoint["uri"])
    delta = changed_fields(fields, previous)
    if not delta:
        return
    memo.kube.patch_distilljob_status(namespace, name, delta)
    new_phase = previous.get("phase") != report.phase.value
    if not new_phase and phase_reason(previous) == report.reason:
        return
    logger.info("DistillJob %s/%s is %s (%s)", namespace, name, report.phase.value, report.reason)
    _announce(distilljob, report, new_phase)


@instrumented("child_deleted")
def child_deleted(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Someone deleted an object a live DistillJob owns: create it again, and say so.

    A RayJob comes back resuming from the job's newest checkpoint; a finished job's RayJob stays
    gone.
    """
    if type != "DELETED":
        return
    distilljob = _live_owner(memo.kube, body)
    job = job_of(distilljob) if distilljob is not None else None
    if job is None:
        return
    try:
        created = ensure_children(job, memo.kube, memo.config.build, logger)
    except kopf.TemporaryError as error:  # a foreign namesake took the name meanwhile
        logger.warning("Cannot restore %s: %s", body["metadata"]["name"], error)
        return
    if not created:
        return
    deleted = f"{body.get('kind', 'object')} {body['metadata']['name']}"
    resumed = ""
    if any(c.startswith("RayJob ") for c in created):
        last = job.status.last_checkpoint if job.status else None
        resumed = (
            f"; training resumes from its newest checkpoint (last recorded: {last.uri})"
            if last
            else "; no checkpoint recorded: training starts again from step 0"
        )
    kopf.warn(
        distilljob,
        reason="ChildRestored",
        message=f"{deleted} was deleted; created again: {', '.join(created)}{resumed}",
    )


@instrumented("workload_admission")
def workload_admission(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """A Kueue Workload of one of our RayJobs: its admission state -> status.admission, Event."""
    owner = _owner_of(body, "RayJob", RAY_GROUP)
    if owner is None or type == "DELETED":
        return
    namespace = body["metadata"]["namespace"]
    rayjob = memo.kube.get(f"{RAY_GROUP}/{RAY_VERSION}", "RayJob", namespace, owner["name"])
    if rayjob is None or rayjob["metadata"].get("uid") != owner.get("uid"):
        return
    distilljob = _live_owner(memo.kube, rayjob)
    message = admission_message(body)
    if distilljob is None or message is None:
        return
    if (distilljob.get("status") or {}).get("admission") == message.text:
        return
    name = distilljob["metadata"]["name"]
    memo.kube.patch_distilljob_status(namespace, name, {"admission": message.text})
    logger.info("DistillJob %s/%s: Kueue: %s", namespace, name, message.text)
    kopf.info(distilljob, reason=message.reason, message=message.text)
