"""DistillJob status from its RayJob: phase, metav1.Conditions, start and completion times.

Pure functions (the clock is an argument). Conditions follow `meta.SetStatusCondition`: one entry
per type; `lastTransitionTime` changes only when `status` flips, while reason, message and
observedGeneration are refreshed on every update.

KubeRay reports two fields: `jobDeploymentStatus` (the RayJob's own lifecycle: "" (new),
Initializing, Running, Complete, Failed, Suspending, Suspended, Retrying, Waiting) and `jobStatus`
(the Ray job: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from distill_api import JobPhase

# One condition per phase that a user waits on (`kubectl wait --for=condition=Succeeded dj/x`).
PHASE_CONDITIONS = {
    "Running": JobPhase.RUNNING,
    "Suspended": JobPhase.SUSPENDED,
    "Succeeded": JobPhase.SUCCEEDED,
    "Failed": JobPhase.FAILED,
}
SPEC_VALID = "SpecValid"
FINISHED_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})


class PhaseReport(NamedTuple):
    phase: JobPhase
    reason: str
    message: str


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second, as the API server writes it."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_reason(text: str) -> str:
    """A CamelCase token the Condition schema accepts (KubeRay's reasons usually already are)."""
    token = re.sub(r"[^A-Za-z0-9_,:]", "", text).rstrip(",:")
    return token if token[:1].isalpha() else "Unknown"


def phase_of(rayjob: Mapping[str, Any]) -> PhaseReport:
    """What the RayJob (spec and status) says about the DistillJob's phase."""
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    ray_status = status.get("jobStatus") or ""
    message = status.get("message") or ""
    if deployment in ("Complete", "Failed") or ray_status in ("SUCCEEDED", "FAILED", "STOPPED"):
        if ray_status == "SUCCEEDED" and deployment != "Failed":
            return PhaseReport(JobPhase.SUCCEEDED, "TrainingSucceeded", message)
        reason = status.get("reason") or f"RayJob{(ray_status or deployment).title()}"
        return PhaseReport(JobPhase.FAILED, as_reason(reason), message or "the Ray job failed")
    if deployment in ("Suspending", "Suspended") or (rayjob.get("spec") or {}).get("suspend"):
        return PhaseReport(JobPhase.SUSPENDED, f"RayJob{deployment or 'Suspended'}", message)
    if deployment == "Running" and ray_status == "RUNNING":
        return PhaseReport(JobPhase.RUNNING, "TrainerRunning", message)
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
    """The status fields a phase owns: phase, its conditions, start and completion times.

    `generation` (the DistillJob's, when the RayJob changed) goes into each condition's
    observedGeneration; the top-level observedGeneration belongs to the spec handlers.
    """
    conditions: list[dict[str, Any]] = [dict(c) for c in previous.get("conditions") or []]
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
    status: dict[str, Any] = {"phase": report.phase.value, "conditions": conditions}
    if report.phase == JobPhase.RUNNING and not previous.get("startTime"):
        status["startTime"] = format_time(now)
    if report.phase in FINISHED_PHASES and not previous.get("completionTime"):
        status["completionTime"] = format_time(now)
    return status


def changed_fields(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `new` that differs from `old` (a minimal merge patch of the status)."""
    return {key: value for key, value in new.items() if old.get(key) != value}
