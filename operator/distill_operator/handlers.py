"""kopf handlers: thin glue between watch events, the pure builders/status code and the API.
The DistillJob's own handlers are here; the watchers of what it owns are in owned.py, what both
share in reconcile.py.

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
from collections.abc import Mapping
from typing import Any

import kopf

from distill_api import GROUP, PLURAL, VERSION, DistillJob, JobPhase
from distill_operator import progress
from distill_operator.apply import Kube
from distill_operator.builders import DEFAULT_OPTIONS, BuildOptions
from distill_operator.builders.grader import grader_replicas
from distill_operator.builders.labels import JOB_LABEL
from distill_operator.builders.names import grader_name, rayjob_name
from distill_operator.metrics import SCRAPE_ERRORS, PhaseTracker, instrumented
from distill_operator.owned import (
    KUEUE_WORKLOADS,
    OWNED_KINDS,
    RAY_GROUP,
    RAY_PLURAL,
    RAY_VERSION,
    WATCHED_CHILDREN,
    child_deleted,
    rayjob_status_changed,
    workload_admission,
)
from distill_operator.reconcile import clear_invalid_spec, ensure_children, job_of, read_job
from distill_operator.status import changed_fields

__all__ = ["OWNED_KINDS", "OperatorConfig", "new_memo", "register"]


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Options from the command line that the handlers read."""

    progress_url_template: str = progress.DEFAULT_URL_TEMPLATE
    progress_interval: float = 30.0
    progress_timeout: float = 5.0
    build: BuildOptions = DEFAULT_OPTIONS


def _warn_if_suspend_ignored(body: kopf.Body, job: DistillJob) -> None:
    """Kueue owns a queued RayJob's `suspend` (it would undo ours): say so instead of failing."""
    if job.spec.suspend and job.spec.queue_name:
        kopf.warn(
            body,
            reason="SuspendIgnored",
            message=f"spec.suspend has no effect on a job queued in {job.spec.queue_name}: "
            "Kueue suspends and resumes it; deactivate its Kueue Workload to stop it",
        )


@instrumented("distilljob_create")
def distilljob_create(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    job = read_job(body, patch)
    clear_invalid_spec(body, memo.kube)
    ensure_children(job, memo.kube, memo.config.build, logger)
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
    ensure_children(job, memo.kube, memo.config.build, logger)


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
    clear_invalid_spec(body, memo.kube)
    ensure_children(job, memo.kube, memo.config.build, logger)
    if (old or {}).get("suspend", False) != job.spec.suspend:
        _warn_if_suspend_ignored(body, job)
    patch.status.update(observedGeneration=body["metadata"]["generation"])


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
    job = job_of(body) if status.get("phase") else None
    if job is None:  # before any phase the create handler builds the grader as it should be
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
