"""RayJob status -> DistillJob phase and conditions (metav1.Condition semantics)."""

from __future__ import annotations

import datetime as dt

import pytest

from distill_api import DistillJobStatus, JobPhase
from distill_operator.reconcile import invalid_spec_status
from distill_operator.status import (
    admission_message,
    as_reason,
    changed_fields,
    phase_of,
    phase_reason,
    phase_status,
    set_condition,
)

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)
T2 = T0 + dt.timedelta(minutes=9)


def rayjob(deployment: str = "", job: str = "", suspend: bool = False, **status: str) -> dict:
    return {
        "spec": {"suspend": suspend} if suspend else {},
        "status": {"jobDeploymentStatus": deployment, "jobStatus": job, **status},
    }


@pytest.mark.parametrize(
    ("body", "phase", "reason"),
    [
        ({}, JobPhase.PENDING, "RayJobCreated"),
        (rayjob("Initializing"), JobPhase.PENDING, "RayJobInitializing"),
        (rayjob("Running", "PENDING"), JobPhase.PENDING, "TrainerSubmitted"),
        (rayjob("Running", "RUNNING"), JobPhase.RUNNING, "TrainerRunning"),
        (rayjob("Retrying"), JobPhase.PENDING, "RayJobRetrying"),
        (rayjob("Complete", "SUCCEEDED"), JobPhase.SUCCEEDED, "TrainingSucceeded"),
        (rayjob("Complete", "FAILED"), JobPhase.FAILED, "RayJobFailed"),
        (rayjob("Complete", "STOPPED"), JobPhase.FAILED, "RayJobStopped"),
        (rayjob("Failed", reason="DeadlineExceeded"), JobPhase.FAILED, "DeadlineExceeded"),
        (rayjob("Failed", "SUCCEEDED", reason="AppFailed"), JobPhase.FAILED, "AppFailed"),
        (rayjob("ValidationFailed"), JobPhase.FAILED, "RayJobValidationFailed"),
        # KubeRay says Complete only once the submitter Job has finished too (K8sJobMode).
        (rayjob("Running", "SUCCEEDED"), JobPhase.RUNNING, "WaitingForSubmitter"),
        (rayjob("Running", "FAILED"), JobPhase.RUNNING, "WaitingForSubmitter"),
        (rayjob("Waiting"), JobPhase.PENDING, "RayJobWaiting"),
        (rayjob("Suspending"), JobPhase.SUSPENDED, "RayJobSuspending"),
        (rayjob("Suspended"), JobPhase.SUSPENDED, "RayJobSuspended"),
        (rayjob("", suspend=True), JobPhase.SUSPENDED, "RayJobSuspended"),
        # A finished job stays finished even if someone sets suspend afterwards.
        (rayjob("Complete", "SUCCEEDED", suspend=True), JobPhase.SUCCEEDED, "TrainingSucceeded"),
    ],
)
def test_phase_of_rayjob(body: dict, phase: JobPhase, reason: str) -> None:
    report = phase_of(body)
    assert (report.phase, report.reason) == (phase, reason)


def test_kueue_suspension_is_a_wait_for_admission_not_a_user_suspend() -> None:
    queued = rayjob("Suspended", suspend=True)
    queued["metadata"] = {"labels": {"kueue.x-k8s.io/queue-name": "team-math"}}
    report = phase_of(queued)
    assert (report.phase, report.reason) == (JobPhase.PENDING, "WaitingForAdmission")
    assert "LocalQueue team-math" in report.message
    # Admitted (Kueue unsuspended it) and running: an ordinary Running job.
    queued.update(rayjob("Running", "RUNNING"))
    assert phase_of(queued).phase == JobPhase.RUNNING


def test_failure_message_is_passed_on() -> None:
    report = phase_of(rayjob("Failed", reason="AppFailed", message="trainer exited with 1"))
    assert report.message == "trainer exited with 1"


def test_reason_is_made_schema_safe() -> None:
    assert as_reason("Job deployment failed!") == "Jobdeploymentfailed"
    assert as_reason("42 things") == "Unknown"


def test_transition_time_changes_only_when_status_flips() -> None:
    first = set_condition([], "Running", False, "RayJobInitializing", "", T0, 1)
    assert first == [
        {
            "type": "Running",
            "status": "False",
            "reason": "RayJobInitializing",
            "message": "",
            "lastTransitionTime": "2025-03-01T12:00:00Z",
            "observedGeneration": 1,
        }
    ]
    same = set_condition(first, "Running", False, "TrainerSubmitted", "queued", T1, 2)
    assert same[0]["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert (same[0]["reason"], same[0]["message"], same[0]["observedGeneration"]) == (
        "TrainerSubmitted",
        "queued",
        2,
    )
    flipped = set_condition(same, "Running", True, "TrainerRunning", "", T2, 2)
    assert flipped[0]["lastTransitionTime"] == "2025-03-01T12:09:00Z"


def test_other_conditions_keep_their_place() -> None:
    conditions = set_condition([], "SpecValid", True, "Validated", "", T0, 1)
    conditions = set_condition(conditions, "Running", False, "RayJobCreated", "", T0, 1)
    updated = set_condition(conditions, "SpecValid", True, "Validated", "", T1, 1)
    assert [c["type"] for c in updated] == ["SpecValid", "Running"]
    assert updated == conditions


def test_phase_status_through_a_whole_run() -> None:
    pending = phase_status(phase_of({}), {}, T0, 1)
    assert pending["phase"] == "Pending"
    by_type = {c["type"]: c["status"] for c in pending["conditions"]}
    assert by_type == {
        "Created": "True",  # the RayJob exists: it is what reported this status
        "Running": "False",
        "Suspended": "False",
        "Succeeded": "False",
        "Failed": "False",
    }
    assert "startTime" not in pending

    assert phase_reason(pending) == "RayJobCreated" and phase_reason({}) is None
    assert pending["reason"] == "RayJobCreated"
    running = phase_status(phase_of(rayjob("Running", "RUNNING")), pending, T1, 1)
    assert phase_reason(running) == "TrainerRunning"
    assert running["startTime"] == "2025-03-01T12:05:00Z"
    changed = changed_fields(running, pending)
    # reason None: the merge patch deletes it (`kubectl get dj` shows none while Running).
    assert changed["reason"] is None
    assert set(changed) == {"phase", "reason", "conditions", "startTime"}
    flips = {c["type"]: c["lastTransitionTime"] for c in running["conditions"]}
    assert flips["Running"] == "2025-03-01T12:05:00Z"
    assert flips["Failed"] == "2025-03-01T12:00:00Z"

    done = phase_status(phase_of(rayjob("Complete", "SUCCEEDED")), running, T2, 1)
    assert done["completionTime"] == "2025-03-01T12:09:00Z"
    assert done["reason"] == "TrainingSucceeded"
    assert "startTime" not in done  # already set: not part of the patch
    # The whole status validates against the API model (and so the CRD's schema).
    DistillJobStatus.model_validate({**running, **done})


def test_completion_time_is_kuberays_end_time_when_known() -> None:
    finished = rayjob("Complete", "SUCCEEDED", endTime="2025-03-01T11:58:00Z")
    status = phase_status(phase_of(finished), {}, T2, 1)
    assert status["completionTime"] == "2025-03-01T11:58:00Z"  # not T2, when it was noticed


def test_a_run_the_operator_never_saw_running_gets_kuberays_start_time() -> None:
    # Started and finished while the operator was down: KubeRay's report has both times.
    finished = rayjob(
        "Complete", "SUCCEEDED", startTime="2025-03-01T11:00:00Z", endTime="2025-03-01T11:58:00Z"
    )
    status = phase_status(phase_of(finished), {"phase": "Pending"}, T2, 1)
    assert (status["startTime"], status["completionTime"]) == (
        "2025-03-01T11:00:00Z",
        "2025-03-01T11:58:00Z",
    )
    failed = rayjob("Failed", "FAILED", startTime="2025-03-01T11:00:00Z")
    assert phase_status(phase_of(failed), {}, T2, 1)["startTime"] == "2025-03-01T11:00:00Z"


def test_start_time_is_kuberays_when_known() -> None:
    started = rayjob("Running", "RUNNING", startTime="2025-03-01T11:50:00Z")
    assert phase_status(phase_of(started), {}, T2, 1)["startTime"] == "2025-03-01T11:50:00Z"
    # Already started (e.g. before a suspension): the first start is kept.
    previous = {"startTime": "2025-03-01T11:00:00Z"}
    assert "startTime" not in phase_status(phase_of(started), previous, T2, 1)


def workload(*conditions: dict, cluster_queue: str | None = None) -> dict:
    status: dict = {"conditions": list(conditions)}
    if cluster_queue:
        status["admission"] = {"clusterQueue": cluster_queue}
    return {"status": status}


def test_kueue_admission_message_from_the_workload_conditions() -> None:
    assert admission_message({}) is None
    # As Kueue's scheduler writes it when the ClusterQueue lacks quota.
    waiting = workload(
        {
            "type": "QuotaReserved",
            "status": "False",
            "reason": "Pending",
            "message": "couldn't assign flavors to pod set rollout: insufficient unused quota "
            "for nvidia.com/gpu in flavor h100, 2 more needed",
        }
    )
    assert admission_message(waiting) == (
        "WaitingForQuota",
        "couldn't assign flavors to pod set rollout: insufficient unused quota for "
        "nvidia.com/gpu in flavor h100, 2 more needed",
    )
    admitted = workload(
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": ""},
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": ""},
        cluster_queue="gpu-cq",
    )
    assert admission_message(admitted) == ("Admitted", "admitted by ClusterQueue gpu-cq")
    evicted = workload(
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "by a job"}
    )
    assert admission_message(evicted) == ("Evicted", "evicted (Preempted): by a job")


def test_same_rayjob_status_twice_is_no_patch() -> None:
    status = phase_status(phase_of(rayjob("Running", "RUNNING")), {}, T0, 1)
    again = phase_status(phase_of(rayjob("Running", "RUNNING")), status, T1, 1)
    assert changed_fields(again, status) == {}


@pytest.mark.parametrize(
    ("stored", "phase", "reason"),
    [
        ({}, "Failed", "InvalidSpec"),
        ({"phase": "Running"}, "Failed", "InvalidSpec"),
        # A stricter operator reading the spec of a job that already ran: its outcome stays, so
        # has_finished still holds and fixing the spec does not train it again.
        ({"phase": "Succeeded"}, "Succeeded", None),
        ({"phase": "Failed", "reason": "DeadlineExceeded"}, "Failed", "DeadlineExceeded"),
        ({"phase": "Failed", "reason": "InvalidSpec"}, "Failed", "InvalidSpec"),
    ],
)
def test_invalid_spec_status_keeps_the_outcome_of_a_finished_run(
    stored: dict, phase: str, reason: str | None
) -> None:
    at = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    fields = invalid_spec_status(stored, "spec.grader.cpu: bad", 3, at)
    merged = {**stored, **fields}
    assert (merged.get("phase"), merged.get("reason")) == (phase, reason)
    (valid,) = fields["conditions"]
    assert (valid["type"], valid["status"], valid["reason"]) == (
        "SpecValid",
        "False",
        "InvalidSpec",
    )
    assert valid["message"] == "spec.grader.cpu: bad" and valid["observedGeneration"] == 3
