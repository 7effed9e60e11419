"""DistillJob status from its RayJob: phase, metav1.Conditions, start and completion times.

Pure functions (the clock is an argument). Conditions follow `meta.SetStatusCondition`: one entry
per type; `lastTransitionTime` changes only when `status` flips, while reason, message and
observedGeneration are refreshed on every update.

KubeRay reports two fields: `jobDeploymentStatus` (the RayJob's own lifecycle: "" (new),
Initializing, Running, Complete, Failed, ValidationFailed, Suspending, Suspended, Retrying,
Waiting) and `jobStatus` (the Ray job: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED); a RayJob
has no conditions of its own. Only `jobDeploymentStatus` says a RayJob is over: in K8sJobMode
KubeRay marks it Complete or Failed once the Ray job is terminal *and* the submitter Job has
finished (rayjob_controller.go, kuberay#1919), so a SUCCEEDED Ray job under a Running deployment is
not done yet. KubeRay's status.startTime is when it began (re)deploying the job (Initializing).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from distill_api import JobPhase
from distill_operator.builders.labels import KUEUE_QUEUE_LABEL

# One condition per phase that a user waits on (`kubectl wait --for=condition=Succeeded dj/x`).
PHASE_CONDITIONS = {
    "Running": JobPhase.RUNNING,
    "Suspended": JobPhase.SUSPENDED,
    "Succeeded": JobPhase.SUCCEEDED,
    "Failed": JobPhase.FAILED,
}
SPEC_VALID = "SpecValid"
CREATED = "Created"  # True once the RayJob (the last owned object built) exists
FINISHED_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})


RAY_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
KUBERAY_FINISHED = frozenset({"Complete", "Failed", "ValidationFailed"})


class PhaseReport(NamedTuple):
    phase: JobPhase
    reason: str
    message: str
    end_time: str | None = None  # KubeRay's status.endTime of a finished RayJob
    start_time: str | None = None  # KubeRay's status.startTime


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second, as the API server writes it."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_reason(text: str) -> str:
    """A CamelCase token the Condition schema accepts (KubeRay's reasons usually already are)."""
    token = re.sub(r"[^A-Za-z0-9_,:]", "", text).rstrip(",:")
    return token if token[:1].isalpha() else "Unknown"


def _finished(status: Mapping[str, Any]) -> PhaseReport:
    """A RayJob KubeRay has finished with: Complete (the Ray job SUCCEEDED, or STOPPED), or
    Failed / ValidationFailed (KubeRay's reason: AppFailed, DeadlineExceeded, ...)."""
    deployment = status.get("jobDeploymentStatus") or ""
    ray_status = status.get("jobStatus") or ""
    message, end_time = status.get("message") or "", status.get("endTime")
    started = status.get("startTime")
    if deployment == "Complete" and ray_status == "SUCCEEDED":
        return PhaseReport(JobPhase.SUCCEEDED, "TrainingSucceeded", message, end_time, started)
    fallback = f"RayJob{ray_status.title() if deployment == 'Complete' else deployment}"
    reason = as_reason(status.get("reason") or fallback)
    message = message or "the Ray job failed"
    return PhaseReport(JobPhase.FAILED, reason, message, end_time, started)


def phase_of(rayjob: Mapping[str, Any]) -> PhaseReport:
    """What the RayJob (spec and status) says about the DistillJob's phase."""
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    ray_status = status.get("jobStatus") or ""
    message = status.get("message") or ""
    started = status.get("startTime")
    if deployment in KUBERAY_FINISHED:
        return _finished(status)
    if deployment in ("Suspending", "Suspended") or (rayjob.get("spec") or {}).get("suspend"):
        queue = (rayjob.get("metadata") or {}).get("labels", {}).get(KUEUE_QUEUE_LABEL)
        if queue:  # suspended by Kueue: not admitted yet, or preempted and queued again
            waiting = message or f"waiting for Kueue to admit it from LocalQueue {queue}"
            return PhaseReport(JobPhase.PENDING, "WaitingForAdmission", waiting)
        return PhaseReport(JobPhase.SUSPENDED, f"RayJob{deployment or 'Suspended'}", message)
    if deployment == "Running" and ray_status in RAY_TERMINAL:
        waiting = f"the Ray job is {ray_status}; KubeRay waits for the submitter to finish"
        return PhaseReport(JobPhase.RUNNING, "WaitingForSubmitter", waiting, None, started)
    if deployment == "Running" and ray_status == "RUNNING":
        return PhaseReport(JobPhase.RUNNING, "TrainerRunning", message, None, started)
    if deployment == "Running":
        return PhaseReport(JobPhase.PENDING, "TrainerSubmitted", message)
    return PhaseReport(JobPhase.PENDING, f"RayJob{deployment or 'Created'}", message)


def set_condition(
    conditions: list[Mapping[str, Any]],
    condition_type: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with `condition_type` set; the others are kept as they are."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == condition_type), None)
    changed = old is None or old.get("status") != value
    condition: dict[str, Any] = {
        "type": condition_type,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": format_time(now) if changed else old["lastTransitionTime"],
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    if old is None:
        return [*(dict(c) for c in conditions), condition]
    # Keep the list's order, so an unchanged status produces an identical list (and no patch).
    return [condition if c is old else dict(c) for c in conditions]


def phase_status(
    report: PhaseReport,
    previous: Mapping[str, Any],
    now: dt.datetime,
    generation: int | None,
) -> dict[str, Any]:
    """The status fields the RayJob decides: phase, reason, conditions, start and completion
    times.

    Called for an existing RayJob, so `Created` is True. `generation` (the DistillJob's, when
    the RayJob changed) goes into each condition's observedGeneration; the top-level
    observedGeneration belongs to the spec handlers.
    """
    conditions = set_condition(
        previous.get("conditions") or [], CREATED, True, "RayJobCreated", "", now, generation
    )
    for condition_type, phase in PHASE_CONDITIONS.items():
        conditions = set_condition(
            conditions,
            condition_type,
            report.phase == phase,
            report.reason,
            report.message,
            now,
            generation,
        )
    status: dict[str, Any] = {
        "phase": report.phase.value,
        # `kubectl get dj` shows it; unset (null deletes it) while Running, the phase says it all.
        "reason": None if report.phase == JobPhase.RUNNING else report.reason,
        "conditions": conditions,
    }
    if report.phase == JobPhase.RUNNING and not previous.get("startTime"):
        # KubeRay's time where it has one: right even when the operator saw Running late.
        status["startTime"] = report.start_time or format_time(now)
    if report.phase in FINISHED_PHASES and not previous.get("completionTime"):
        # KubeRay's end time where it has one: right even when the operator was down then.
        status["completionTime"] = report.end_time or format_time(now)
        if report.start_time and not previous.get("startTime"):  # it never saw Running
            status["startTime"] = report.start_time
    return status


def phase_reason(status: Mapping[str, Any]) -> str | None:
    """The reason of the current phase (every phase condition carries it), None before any."""
    conditions = status.get("conditions") or []
    return next((c["reason"] for c in conditions if c.get("type") in PHASE_CONDITIONS), None)


class AdmissionMessage(NamedTuple):
    reason: str  # the Event's reason
    text: str


def _workload_condition(workload: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def admission_message(workload: Mapping[str, Any]) -> AdmissionMessage | None:
    """What a Kueue Workload says about admission, None before Kueue has said anything.

    Kueue's scheduler writes why a workload waits into the message of its `QuotaReserved=False`
    condition ("couldn't assign flavors to pod set ...: insufficient quota ..."), a preemption
    into `Evicted=True`, and sets `Admitted=True` once the job may run.
    """
    admitted = _workload_condition(workload, "Admitted")
    if admitted.get("status") == "True":
        queue = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue")
        where = f" by ClusterQueue {queue}" if queue else ""
        return AdmissionMessage("Admitted", f"admitted{where}")
    reserved = _workload_condition(workload, "QuotaReserved")
    if reserved.get("status") == "False" and reserved.get("message"):
        return AdmissionMessage("WaitingForQuota", reserved["message"])
    evicted = _workload_condition(workload, "Evicted")
    if evicted.get("status") == "True":
        text = f"evicted ({evicted.get('reason', 'Unknown')}): {evicted.get('message', '')}"
        return AdmissionMessage("Evicted", text)
    return None


def changed_fields(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `new` that differs from `old` (a minimal merge patch of the status)."""
    return {key: value for key, value in new.items() if old.get(key) != value}
