"""One sink for the trainer's metrics dict: progress bar, JSONL file, Prometheus, WandB.

The driver builds one flat dict per step (`training_step_reward`, `distill/kl_per_token`,
`timing_s/generate`, …) and hands it to `MetricsSink.log`. The same dict goes to

- the console: a tqdm progress bar showing step, reward, KL and validation reward;
- `<output_dir>/metrics.jsonl`: one JSON object per call (non-finite values as null), rewritten
  by each run;
- Prometheus (when a port is given): one gauge per documented key, named with `/` → `_` and
  labelled `distilljob`, plus `timing_seconds{distilljob,phase}` from the `timing_s/<phase>` keys.
  Only the keys in `GAUGES` are exported (docs/metrics.md documents exactly these); extra
  diagnostic keys (e.g. `rollout/logprob_mismatch`) reach the file and WandB only;
- WandB, when the package is installed and WANDB_PROJECT is set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from tqdm import tqdm

log = logging.getLogger(__name__)

GAUGES: dict[str, str] = {
    "training/step": "Last completed training step.",
    "training/total_steps": "Steps this run will take.",
    "training/epoch": "Current pass over the training set (0-based).",
    "training_step_reward": "Mean grader score of the step's responses.",
    "val/reward": "Mean grader score over valN responses per validation problem (1: greedy).",
    "distill/kl_per_token": "Mean per-token KL(student ‖ teacher) on response tokens.",
    "distill/kl_coef": "α, the weight of the teacher KL in the advantage.",
    "actor/entropy": "Mean per-token entropy of the student on the step's responses.",
    "actor/pg_loss": "PPO policy loss (mean over mini-batches).",
    "actor/pg_clipfrac": "Fraction of response tokens whose ratio was clipped.",
    "actor/ppo_kl": "Approximate KL between the updated and the rollout-time student.",
    "actor/grad_norm": "Actor gradient norm before clipping (mean over mini-batches).",
    "actor/lr": "Actor learning rate.",
    "critic/vf_loss": "Critic value loss (gae only).",
    "response_length/mean": "Mean response length in tokens.",
    "response_length/clip_ratio": "Fraction of responses cut at maxResponseLength.",
    "throughput/tokens_per_second": "Prompt and response tokens processed per second of step.",
    "training/last_checkpoint_step": "Step of the newest checkpoint.",
    "training/final_model_saved": "1 once the trained student is exported to <uri>/final/.",
    "weight_sync/bytes": "Bytes of weights one rollout engine received at the last sync.",
}
TIMING_PREFIX = "timing_s/"
TIMING_PHASES = (
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
)


def prometheus_name(key: str) -> str:
    """`distill/kl_per_token` → `distill_kl_per_token`."""
    return key.replace("/", "_")


class PrometheusExporter:
    """The documented gauges on their own registry, served over HTTP on `port` (0: any free)."""

    def __init__(self, job_name: str, port: int, addr: str = "0.0.0.0") -> None:
        self.job_name = job_name
        self.registry = CollectorRegistry()
        self.gauges = {
            key: Gauge(prometheus_name(key), text, ["distilljob"], registry=self.registry)
            for key, text in GAUGES.items()
        }
        self.timing = Gauge(
            "timing_seconds",
            "Seconds spent in each phase of the last step.",
            ["distilljob", "phase"],
            registry=self.registry,
        )
        self.server, self.thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = int(self.server.server_port)
        log.info("serving metrics on :%d/metrics", self.port)

    def update(self, metrics: dict[str, float]) -> None:
        if f"{TIMING_PREFIX}step" in metrics:
            # A step's record names only the phases it ran (validate, checkpoint: some steps);
            # the others spent 0 s in it, not what they spent the last time they ran.
            metrics = {f"{TIMING_PREFIX}{phase}": 0.0 for phase in TIMING_PHASES} | metrics
        for key, value in metrics.items():
            if key in self.gauges:
                self.gauges[key].labels(self.job_name).set(value)
            elif key.startswith(TIMING_PREFIX):
                phase = key.removeprefix(TIMING_PREFIX)
                self.timing.labels(self.job_name, phase).set(value)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _finite_or_none(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


class MetricsSink:
    """Where every metrics dict goes; `close()` flushes and stops the HTTP server."""

    def __init__(
        self,
        job_name: str,
        output_dir: Path,
        total_steps: int,
        metrics_port: int | None = None,
        progress: bool = True,
        resumed_step: int | None = None,
        progress_line: int = 0,
    ) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "metrics.jsonl"
        self.file = self.path.open("w", encoding="utf-8")  # one run per file
        self.prometheus = None
        if metrics_port is not None:
            self.prometheus = PrometheusExporter(job_name, metrics_port)
            # Known before the first step: scrapers see the run's size (and a resumed run where
            # it stands, not step 0: the operator copies it into the DistillJob's status) while
            # models load.
            known = {"training/step": float(resumed_step or 0), "training/total_steps": total_steps}
            if resumed_step is not None:
                known["training/last_checkpoint_step"] = float(resumed_step)
            self.prometheus.update(known)
        # Created at the first log, so model loading does not count against its rate.
        self.bar: tqdm | None = None
        self.bar_args = {
            "total": total_steps,
            "initial": resumed_step or 0,
            "desc": job_name,
            "unit": "step",
            "disable": not progress,
            "position": progress_line,
            # A finished bar below the first would be redrawn on the first line (tqdm's close).
            "leave": progress_line == 0,
        }
        self.wandb = _start_wandb(job_name)
        self.last: dict[str, float] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.last.update(metrics)
        record = {"step": step, "time": time.time(), **metrics}
        self.file.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}) + "\n")
        self.file.flush()
        if self.prometheus is not None:
            self.prometheus.update(metrics)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        self._show(step)

    def _show(self, step: int) -> None:
        if self.bar is None:
            self.bar = tqdm(**self.bar_args)
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        shown = {
            "reward": self.last.get("training_step_reward"),
            "kl": self.last.get("distill/kl_per_token"),
            "val": self.last.get("val/reward"),
        }
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.prometheus is not None:
            self.prometheus.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(job_name: str) -> Any:
    """A WandB run when WANDB_PROJECT is set and wandb is installed; None otherwise."""
    project = os.environ.get("WANDB_PROJECT")
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        log.warning("WANDB_PROJECT is set but wandb is not installed; not logging to WandB")
        return None
    return wandb.init(project=project, name=job_name)
