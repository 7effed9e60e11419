"""Training progress for `kubectl get dj`: scrape the trainer's /metrics into status fields.

The trainer (on the Ray head) exports gauges labelled `distilljob=<job>` (see docs/metrics.md);
the operator's timer reads a few of them every --progress-interval seconds.
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from distill_api import DistillJob
from distill_operator.builders.names import trainer_service_name

DEFAULT_URL_TEMPLATE = "http://{service}.{namespace}.svc:9400/metrics"

# status field <- trainer gauge
_FLOAT_FIELDS = {
    "reward": "training_step_reward",
    "klPerToken": "distill_kl_per_token",
    "valReward": "val_reward",
}
_INT_FIELDS = {"step": "training_step", "totalSteps": "training_total_steps"}
_CHECKPOINT_GAUGE = "training_last_checkpoint_step"
_FINAL_MODEL_GAUGE = "training_final_model_saved"  # 1 once <checkpoint.uri>/final/ is written
_WANTED = {*_FLOAT_FIELDS.values(), *_INT_FIELDS.values(), _CHECKPOINT_GAUGE, _FINAL_MODEL_GAUGE}


class ScrapeError(Exception):
    """The trainer's metrics endpoint could not be read or parsed."""


def progress_url(template: str, name: str, namespace: str) -> str:
    """Fill `{name}`, `{namespace}` and `{service}` (the trainer Service) into the template."""
    return template.format(name=name, namespace=namespace, service=trainer_service_name(name))


def scrape(url: str, timeout: float) -> str:
    """GET the metrics text; any network or HTTP failure becomes a ScrapeError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8")
    except (OSError, ValueError) as error:
        raise ScrapeError(f"{url}: {error}") from error


def trainer_gauges(text: str, job_name: str) -> dict[str, float]:
    """The wanted gauges of this job (samples labelled for another job are ignored)."""
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                job_label = sample.labels.get("distilljob", job_name)
                if sample.name in _WANTED and job_label == job_name and math.isfinite(sample.value):
                    values[sample.name] = sample.value
    except ValueError as error:
        raise ScrapeError(f"unparseable metrics: {error}") from error
    return values


def checkpoint_uri(base: str, step: int) -> str:
    """Where the trainer commits the checkpoint of `step` (the trainer's layout)."""
    return f"{base.rstrip('/')}/global_step_{step}/"


def final_model_uri(base: str) -> str:
    return f"{base.rstrip('/')}/final/"


def progress_status(gauges: dict[str, float], job: DistillJob) -> dict[str, Any]:
    """Status fields from the gauges; lastCheckpoint and finalModel are under spec.checkpoint.uri
    (without spec.checkpoint they stay in the pods and are not reported)."""
    status: dict[str, Any] = {
        field: gauges[gauge] for field, gauge in _FLOAT_FIELDS.items() if gauge in gauges
    }
    status.update(
        {field: int(gauges[gauge]) for field, gauge in _INT_FIELDS.items() if gauge in gauges}
    )
    if job.spec.checkpoint is None:
        return status
    base = job.spec.checkpoint.uri
    checkpoint_step = int(gauges.get(_CHECKPOINT_GAUGE, 0))
    if checkpoint_step > 0:
        status["lastCheckpoint"] = {
            "uri": checkpoint_uri(base, checkpoint_step),
            "step": checkpoint_step,
        }
    if gauges.get(_FINAL_MODEL_GAUGE, 0) >= 1:
        status["finalModel"] = final_model_uri(base)
    return status
