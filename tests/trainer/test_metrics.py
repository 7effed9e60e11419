"""The metrics a run emits, and the Prometheus endpoint that serves them (scraped over HTTP)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from distill_trainer.config import RunOptions
from distill_trainer.driver import run_job
from distill_trainer.metrics import GAUGES, TIMING_PHASES, MetricsSink, prometheus_name

# docs/metrics.md, "Trainer": the trainer's gauges, exactly.
DOCUMENTED = {
    "training_step",
    "training_total_steps",
    "training_epoch",
    "training_step_reward",
    "val_reward",
    "distill_kl_per_token",
    "distill_kl_coef",
    "actor_entropy",
    "actor_pg_loss",
    "actor_pg_clipfrac",
    "actor_ppo_kl",
    "actor_grad_norm",
    "actor_lr",
    "critic_vf_loss",
    "response_length_mean",
    "response_length_clip_ratio",
    "throughput_tokens_per_second",
    "training_last_checkpoint_step",
    "training_final_model_saved",
    "weight_sync_bytes",
}
PHASES = {
    "generate",
    "grade",
    "old_logprob",
    "teacher_logprob",
    "values",
    "advantage",
    "update_actor",
    "update_critic",
    "weight_sync",
    "validate",
    "checkpoint",
    "step",
}


def test_gauge_names_are_the_documented_ones() -> None:
    assert {prometheus_name(key) for key in GAUGES} == DOCUMENTED
    assert set(TIMING_PHASES) == PHASES


@pytest.fixture(scope="module")
def gae_history(student_dir: Path, data_dir: Path, tmp_path_factory) -> list[dict[str, float]]:
    """The metrics dicts of a real gae run with the teacher KL: every role and phase runs."""
    from distill_api import load_job

    document = {
        "apiVersion": "distill.dev/v1alpha1",
        "kind": "DistillJob",
        "metadata": {"name": "gae-run"},
        "spec": {
            "student": {"model": str(student_dir)},
            "algorithm": {"advEstimator": "gae", "rolloutN": 2},
            "training": {"batchSize": 2, "ppoMiniBatchSize": 1, "totalSteps": 1},
            "rollout": {"maxPromptLength": 64, "maxResponseLength": 6},
            "data": {
                "train": str(data_dir / "train.parquet"),
                "val": str(data_dir / "test.parquet"),
            },
            "resources": {"critic": {"gpusPerReplica": 0}},
        },
    }
    out = tmp_path_factory.mktemp("gae-run")
    # The actor's scoring pass too, which the CPU engine's exact logprobs replace by default.
    options = RunOptions(
        backend="inprocess", output_dir=out, progress=False, old_logprobs_from_rollout=False
    )
    return run_job(load_job(document), options).history


def test_a_step_emits_every_documented_key(gae_history) -> None:
    step = gae_history[-1]
    assert {prometheus_name(k) for k in step if k in GAUGES} == DOCUMENTED
    assert {k.removeprefix("timing_s/") for k in step if k.startswith("timing_s/")} == PHASES
    assert all(math.isfinite(v) for v in step.values())


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_endpoint_serves_the_step_metrics(gae_history, tmp_path: Path) -> None:
    sink = MetricsSink("my-job", tmp_path, total_steps=1, metrics_port=0, progress=False)
    try:
        for step, metrics in enumerate(gae_history):
            sink.log(metrics, step)
        scraped = _scrape(sink.prometheus.port)
    finally:
        sink.close()
    last = gae_history[-1]
    job = (("distilljob", "my-job"),)
    for key in GAUGES:
        assert scraped[(prometheus_name(key), job)] == pytest.approx(last[key]), key
    for phase in PHASES:
        labels = (("distilljob", "my-job"), ("phase", phase))
        assert scraped[("timing_seconds", labels)] == pytest.approx(last[f"timing_s/{phase}"])
    # Diagnostic extras go to the JSONL file only, not to Prometheus.
    assert "actor/pg_clipfrac_lower" in last
    assert not any(name == "actor_pg_clipfrac_lower" for name, _ in scraped)


def test_a_phase_a_step_skipped_reads_zero_not_its_last_time(tmp_path: Path) -> None:
    sink = MetricsSink("j", tmp_path, total_steps=3, metrics_port=0, progress=False)
    try:
        sink.log({"timing_s/validate": 30.0, "timing_s/generate": 2.0, "timing_s/step": 33.0}, 1)
        sink.log({"timing_s/generate": 2.5, "timing_s/step": 2.6}, 2)
        scraped = _scrape(sink.prometheus.port)
    finally:
        sink.close()

    def seconds(phase: str) -> float:
        return scraped[("timing_seconds", (("distilljob", "j"), ("phase", phase)))]

    assert (seconds("validate"), seconds("generate"), seconds("step")) == (0.0, 2.5, 2.6)


def test_a_resumed_run_reports_its_step_before_the_first_new_one(tmp_path: Path) -> None:
    # Models load for minutes on a real run; the operator copies training_step into the
    # DistillJob's status meanwhile, which must not go back to 0.
    sink = MetricsSink("j", tmp_path, 200, metrics_port=0, progress=False, resumed_step=50)
    try:
        scraped = _scrape(sink.prometheus.port)
    finally:
        sink.close()
    job = (("distilljob", "j"),)
    assert scraped[("training_step", job)] == 50
    assert scraped[("training_last_checkpoint_step", job)] == 50
    assert scraped[("training_total_steps", job)] == 200


def test_jsonl_has_one_line_per_log_and_nulls_for_non_finite(tmp_path: Path) -> None:
    sink = MetricsSink("j", tmp_path, total_steps=2, progress=False)
    sink.log({"training_step_reward": 0.5}, 1)
    sink.log({"actor/grad_norm": math.nan}, 2)
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["step"], line.get("training_step_reward")) for line in lines] == [
        (1, 0.5),
        (2, None),
    ]
    assert lines[1]["actor/grad_norm"] is None
    assert sink.last["training_step_reward"] == 0.5 and math.isnan(sink.last["actor/grad_norm"])
