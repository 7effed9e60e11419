"""kopf handlers: thin glue between watch events, the pure builders/status code and the API.

`register(registry, config)` wires them (the progress timer's interval is a CLI option, so the
handlers are registered at start-up rather than by import-time decorators):

- distilljob_create / distilljob_resume: create (or re-patch) the owned objects;
- distilljob_update: a changed spec (suspend, grader, ttl) reaches the owned objects;
- rayjob_status_changed: every event of an owned RayJob -> DistillJob phase and conditions;
- child_deleted: an owned object deleted by someone else is created again (a finished job's
  RayJob excepted: a finished job never runs again);
- workload_admission: Kueue's word on a queued job's Workload -> status.admission and an Event;
- distilljob_progress: timer, while Running, scraping the trainer's metrics into the status;
- distilljob_event: the `distill_operator_jobs{phase}` gauge; the grader's replicas follow the
  phase (zero while suspended, waiting for Kueue, or finished).

Deletion needs no handler: owned objects go with their DistillJob through ownerReferences. The
one finalizer is kopf's, on Running jobs only, so that it can stop the progress timer first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from distill_api import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    DistillJob,
    DistillJobStatus,
    JobPhase,
    format_validation_error,
    load_job,
)
from distill_api.v1alpha1 import CheckpointStatus
from distill_operator import progress
from distill_operator.apply import Kube, OwnedByAnother
from distill_operator.builders import DEFAULT_OPTIONS, BuildOptions, build_children
from distill_operator.builders.grader import INVALID_SPEC, grader_replicas, has_finished
from distill_operator.builders.labels import JOB_LABEL
from distill_operator.builders.names import grader_name, rayjob_name
from distill_operator.builders.rayjob import rayjob_mutable_spec
from distill_operator.metrics import SCRAPE_ERRORS, PhaseTracker, instrumented
from distill_operator.status import (
    SPEC_VALID,
    PhaseReport,
    admission_message,
    changed_fields,
    phase_of,
    phase_reason,
    phase_status,
    set_condition,
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


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Options from the command line that the handlers read."""

    progress_url_template: str = progress.DEFAULT_URL_TEMPLATE
    progress_interval: float = 30.0
    progress_timeout: float = 5.0
    build: BuildOptions = DEFAULT_OPTIONS


def _now() -> dt.datetime:
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
        conditions = set_condition(
            (body.get("status") or {}).get("conditions") or [],
            SPEC_VALID,
            False,
            INVALID_SPEC,
            message,
            _now(),
            body["metadata"].get("generation"),
        )
        patch.status.update(phase=JobPhase.FAILED.value, reason=INVALID_SPEC, conditions=conditions)
        raise kopf.PermanentError(f"invalid DistillJob: {message}") from error
    job.status = status_for_builders(body.get("status") or {})
    return job


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


def _ensure_children(
    job: DistillJob, kube: Kube, config: OperatorConfig, logger: kopf.Logger
) -> list[str]:
    """Create every owned object, or bring it back to the built manifest; the created ones.

    An existing RayJob only gets its mutable fields patched: KubeRay owns the running cluster
    and rejects most changes to it. A finished job's RayJob is left alone, even when it is gone:
    creating it again would run the whole training again.
    """
    owner_uid = (job.metadata.model_extra or {})["uid"]
    finished = has_finished(job)
    created = []
    for obj in build_children(job, config.build):
        if obj["kind"] == "RayJob" and finished:
            continue
        update = {"spec": rayjob_mutable_spec(job)} if obj["kind"] == "RayJob" else None
        try:
            outcome = kube.ensure(obj, owner_uid, update)
        except OwnedByAnother as error:
            # A namesake from a deleted DistillJob that the garbage collector has not removed yet.
            raise kopf.TemporaryError(str(error), delay=5) from error
        name = obj["metadata"]["name"]
        logger.info("%s %s/%s %s", obj["kind"], job.metadata.namespace, name, outcome)
        if outcome == "created":
            created.append(f"{obj['kind']} {name}")
    return created


def _warn_if_suspend_ignored(body: kopf.Body, job: DistillJob) -> None:
    """Kueue owns a queued RayJob's `suspend` (it would undo ours): say so instead of failing."""
    if job.spec.suspend and job.spec.queue_name:
        kopf.warn(
            body,
            reason="SuspendIgnored",
            message=f"spec.suspend has no effect on a job queued in {job.spec.queue_name}: "
            "Kueue suspends and resumes it; deactivate its Kueue Workload to stop it",
        )


def _clear_invalid_spec(body: Mapping[str, Any], kube: Kube) -> None:
    """A spec fixed after an InvalidSpec: set SpecValid back to True.

    Phase and phase conditions are written only by `rayjob_status_changed` (a merge patch
    replaces the whole conditions list, so two writers would undo each other's changes). This
    is the one exception, written before the owned objects are ensured, so before any RayJob
    event of the fixed job can reach the watcher.
    """
    conditions = (body.get("status") or {}).get("conditions") or []
    if any(c.get("type") == SPEC_VALID and c.get("status") == "False" for c in conditions):
        generation = body["metadata"].get("generation")
        valid = set_condition(conditions, SPEC_VALID, True, "Validated", "", _now(), generation)
        meta = body["metadata"]
        kube.patch_distilljob_status(meta["namespace"], meta["name"], {"conditions": valid})


@instrumented("distilljob_create")
def distilljob_create(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    job = read_job(body, patch)
    _clear_invalid_spec(body, memo.kube)
    _ensure_children(job, memo.kube, memo.config, logger)
    _warn_if_suspend_ignored(body, job)
    patch.status.update(
        observedGeneration=body["metadata"]["generation"], rayJobName=rayjob_name(job.metadata.name)
    )
    kopf.info(
        body,
        reason="Created",
        message=f"RayJob {rayjob_name(job.metadata.name)}, "
        f"grader {grader_name(job.metadata.name)} and trainer metrics Service",
    )
    if job.spec.checkpoint is None:
        kopf.warn(
            body,
            reason="ResultsNotKept",
            message="spec.checkpoint is not set: checkpoints and the final model stay on the "
            "pods' disks and are lost with the Ray cluster (ttlSecondsAfterFinished after the "
            "end, or on suspension and preemption, which also restart training from step 0)",
        )


@instrumented("distilljob_resume")
def distilljob_resume(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """After an operator restart: recreate whatever was deleted meanwhile; status is kept."""
    job = read_job(body, patch)
    _ensure_children(job, memo.kube, memo.config, logger)


@instrumented("distilljob_update")
def distilljob_update(
    body: kopf.Body,
    old: Mapping[str, Any] | None,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """A spec change; the CRD's transition rules let only suspend, grader and ttl change."""
    job = read_job(body, patch)
    _clear_invalid_spec(body, memo.kube)
    _ensure_children(job, memo.kube, memo.config, logger)
    if (old or {}).get("suspend", False) != job.spec.suspend:
        _warn_if_suspend_ignored(body, job)
    patch.status.update(observedGeneration=body["metadata"]["generation"])


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
    fields = phase_status(report, previous, _now(), generation)
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

    A RayJob comes back resuming from status.lastCheckpoint; a finished job's RayJob stays gone.
    """
    if type != "DELETED":
        return
    distilljob = _live_owner(memo.kube, body)
    job = job_of(distilljob) if distilljob is not None else None
    if job is None:
        return
    try:
        created = _ensure_children(job, memo.kube, memo.config, logger)
    except kopf.TemporaryError as error:  # a foreign namesake took the name meanwhile
        logger.warning("Cannot restore %s: %s", body["metadata"]["name"], error)
        return
    if not created:
        return
    deleted = f"{body.get('kind', 'object')} {body['metadata']['name']}"
    resumed = ""
    if any(c.startswith("RayJob ") for c in created) and job.status and job.status.last_checkpoint:
        resumed = f"; training resumes from {job.status.last_checkpoint.uri}"
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


@instrumented("distilljob_progress")
def distilljob_progress(
    body: kopf.Body,
    name: str,
    namespace: str,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    config: OperatorConfig = memo.config
    url = progress.progress_url(config.progress_url_template, name, namespace)
    try:
        text = progress.scrape(url, config.progress_timeout)
        gauges = progress.trainer_gauges(text, name)
    except progress.ScrapeError as error:
        SCRAPE_ERRORS.inc()
        logger.warning("Cannot read the trainer's metrics: %s", error)
        return
    fields = progress.progress_status(gauges, read_job(body, patch))
    delta = changed_fields(fields, status)
    if delta:
        patch.status.update(delta)


@instrumented("distilljob_event")
def distilljob_event(
    body: kopf.Body,
    type: str | None,
    uid: str,
    name: str,
    namespace: str,
    status: kopf.Status,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Every DistillJob event: the phase gauge, and the grader's replicas for the new phase.

    The grader is scaled here, in the DistillJob's own worker, not by the RayJob watcher: kopf
    runs one DistillJob's handlers one after another, so a create/resume/update that applied an
    older phase's replicas cannot overwrite this later write (builders.grader_replicas agrees).
    A finished job's grader is kept at zero rather than deleted: its Service and logs stay.
    """
    memo.phases.observe(uid, status.get("phase"), deleted=type == "DELETED")
    if type == "DELETED":
        memo.graders.pop(uid, None)
        return
    job = job_of(body)
    if job is None:
        return
    replicas = grader_replicas(job)
    if memo.graders.get(uid) == replicas:
        return
    grader, patch = grader_name(name), {"spec": {"replicas": replicas}}
    if memo.kube.patch_if_exists("apps/v1", "Deployment", namespace, grader, patch):
        memo.graders[uid] = replicas
        reason = status.get("reason") or status.get("phase")
        logger.info("Grader of %s/%s at %d replicas (%s)", namespace, name, replicas, reason)


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


def _is_running(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == JobPhase.RUNNING.value


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Attach every handler to `registry`."""
    resource = (GROUP, VERSION, PLURAL)
    on = {"registry": registry}
    kopf.on.create(*resource, id="distilljob_create", **on)(distilljob_create)
    kopf.on.resume(*resource, id="distilljob_resume", **on)(distilljob_resume)
    kopf.on.update(*resource, id="distilljob_update", field="spec", **on)(distilljob_update)
    kopf.on.event(*resource, id="distilljob_event", **on)(distilljob_event)
    kopf.timer(
        *resource,
        id="distilljob_progress",
        interval=config.progress_interval,
        when=_is_running,
        **on,
    )(distilljob_progress)
    owned = {"labels": {JOB_LABEL: kopf.PRESENT}, **on}
    kopf.on.event(RAY_GROUP, RAY_VERSION, RAY_PLURAL, id="rayjob_status_changed", **owned)(
        rayjob_status_changed
    )
    for group, version, plural in WATCHED_CHILDREN:
        kopf.on.event(group, version, plural, id=f"{plural}_deleted", when=_deleted, **owned)(
            child_deleted
        )
    kopf.on.event(KUEUE_WORKLOADS, id="workload_admission", **on)(workload_admission)


def new_memo(kube: Kube, config: OperatorConfig) -> kopf.Memo:
    """The state every handler reads: API client, options, the phase gauge's bookkeeping and
    the grader replicas last applied per DistillJob uid."""
    return kopf.Memo(kube=kube, config=config, phases=PhaseTracker(), graders={})
