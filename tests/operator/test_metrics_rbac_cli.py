"""The operator's own metrics, its RBAC declaration and its command line."""

from __future__ import annotations

import subprocess
import sys

import kopf
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from distill_operator import rbac
from distill_operator.__main__ import configure_settings, parse_args
from distill_operator.metrics import PhaseTracker, instrumented


def test_instrumented_counts_outcomes_and_keeps_results() -> None:
    @instrumented("test_handler")
    def handler(fail: bool) -> str:
        if fail:
            raise RuntimeError("boom")
        return "ok"

    def count(outcome: str) -> float:
        labels = {"handler": "test_handler", "outcome": outcome}
        return REGISTRY.get_sample_value("distill_operator_reconcile_total", labels) or 0.0

    assert handler(fail=False) == "ok"
    with pytest.raises(RuntimeError, match="boom"):
        handler(fail=True)
    assert (count("success"), count("error")) == (1.0, 1.0)
    durations = REGISTRY.get_sample_value(
        "distill_operator_reconcile_duration_seconds_count", {"handler": "test_handler"}
    )
    assert durations == 2.0


def test_phase_tracker_counts_current_phases() -> None:
    registry = CollectorRegistry()
    tracker = PhaseTracker(Gauge("jobs", "jobs", ["phase"], registry=registry))

    def jobs(phase: str) -> float:
        return registry.get_sample_value("jobs", {"phase": phase})

    assert tracker.observe("a", None) is None  # not seen before
    tracker.observe("b", "Running")
    tracker.observe("c", "Running")
    assert (jobs("Pending"), jobs("Running"), jobs("Failed")) == (1, 2, 0)
    assert tracker.observe("b", "Succeeded") == "Running"
    assert tracker.observe("c", "Running", deleted=True) == "Running"
    assert (jobs("Running"), jobs("Succeeded")) == (0, 1)


def test_rbac_rules_cover_what_the_operator_writes() -> None:
    assert rbac.allows("ray.io", "rayjobs", "create")
    assert rbac.allows("distill.dev", "distilljobs/status", "patch")
    assert not rbac.allows("ray.io", "rayjobs", "delete")  # garbage collection deletes them
    assert not rbac.allows("", "secrets", "get")  # secrets are referenced, never read
    printed = subprocess.run(
        [sys.executable, "-m", "distill_operator.rbac"], capture_output=True, text=True, check=True
    ).stdout
    rules = yaml.safe_load(printed)["rules"]
    assert rules == rbac.rbac_rules()
    assert {
        "apiGroups": ["ray.io"],
        "resources": ["rayjobs"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    } in rules
    declared = {p.resource for p in rbac.REQUIRED_PERMISSIONS}
    assert declared >= rbac.CLUSTER_SCOPED_RESOURCES


def test_command_line_defaults_and_choices() -> None:
    args = parse_args([])
    assert (args.namespaces, args.all_namespaces, args.standalone, args.peering) == (
        [],
        False,
        False,
        None,
    )
    assert (args.liveness_port, args.metrics_port, args.progress_interval) == (8080, 9100, 30.0)
    assert args.progress_url_template == "http://{service}.{namespace}.svc:9400/metrics"
    args = parse_args(["-n", "team-a", "--namespace", "team-b", "--peering", "distill"])
    assert (args.namespaces, args.peering) == (["team-a", "team-b"], "distill")
    with pytest.raises(SystemExit):
        parse_args(["--peering", "x", "--standalone"])
    with pytest.raises(SystemExit):
        parse_args(["--namespace", "a", "--all-namespaces"])


def test_replicas_get_distinct_peering_priorities() -> None:
    """kopf pauses peers without the single highest priority: equal priorities pause them all."""
    priorities = set()
    for _ in range(5):
        settings = kopf.OperatorSettings()
        configure_settings(settings)
        assert settings.peering.priority > 0
        priorities.add(settings.peering.priority)
    assert len(priorities) > 1
