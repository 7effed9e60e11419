"""A/B of single phases on one fixed batch: the before/after numbers of docs/benchmarks.md.

On a shared machine whole-step runs minutes apart meet different neighbours; here the variants of
one phase run interleaved (order reversed every other repetition) on the same batch of the demo's
job (KL on), so each pair of numbers was measured in the same time window.

    .venv/bin/python bench/ab.py [--reps 7] [--threads 1] [--only actor,teacher,grade]
        [--out bench/results/ab.json] [size flags as bench/step.py]

Groups (each prints a table and goes to the result file):
- actor: `compute_logprobs` (old logprobs with and without the entropy) and `update` at
  micro-batch 16 rows vs the token budget alone, gradient checkpointing on and off;
- teacher: `compute_logprobs` at 16 rows vs the token budget;
- grade: the step's 256 responses through the grading pool alone vs the in-process fast path;
- ray (only with `--only ray`): the step's batch to an idle Ray actor and back, as each role call
  on the Ray backend moves it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import step as step_bench  # noqa: E402  (the shared job set-up)

from distill_trainer.config import RunOptions, role_configs  # noqa: E402
from distill_trainer.driver import train_step  # noqa: E402
from distill_trainer.prompts import prompt_batches  # noqa: E402
from distill_trainer.setup import setup_run  # noqa: E402

OLD_ROWS = 16  # the micro-batch default before the token budget alone sized them


def interleaved(variants: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, float]]:
    """Median and range of each variant's wall seconds, and of this process's CPU seconds
    (`cpu`: with one torch thread, the work itself, whatever the neighbours take), the variants
    alternating in order."""
    names = list(variants)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            started, started_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {
        name: {**step_bench.spread(wall[name]), "cpu": step_bench.spread(cpu[name])}
        for name in names
    }


def actor_variants(run: Any, batch: Any, job: Any) -> dict[str, Callable[[], Any]]:
    from distill_trainer.roles.trainer import HFActor

    cfg = role_configs(job.spec, RunOptions(device="cpu"), run.total_steps).actor
    rows = max(batch.size, 1)
    actors = {
        "rows16_gc": HFActor(replace(cfg, micro_batch_size=OLD_ROWS, gradient_checkpointing=True)),
        "budget_gc": HFActor(replace(cfg, micro_batch_size=rows, gradient_checkpointing=True)),
        "budget_nogc": HFActor(replace(cfg, micro_batch_size=rows, gradient_checkpointing=False)),
    }
    variants: dict[str, Callable[[], Any]] = {}
    for name, actor in actors.items():
        variants[f"old_logprob+entropy/{name}"] = lambda a=actor: a.compute_logprobs(batch, True)
        variants[f"old_logprob/{name}"] = lambda a=actor: a.compute_logprobs(batch, False)
        variants[f"update/{name}"] = lambda a=actor: a.update(batch)
    return variants


def teacher_variants(run: Any, batch: Any, job: Any) -> dict[str, Callable[[], Any]]:
    from distill_trainer.roles.trainer import HFTeacher

    cfg = role_configs(job.spec, RunOptions(device="cpu"), run.total_steps).teacher
    assert cfg is not None
    teachers = {
        name: HFTeacher(replace(cfg, micro_batch_size=rows))
        for name, rows in (("rows16", OLD_ROWS), ("budget", batch.size))
    }
    return {
        f"teacher/{name}": lambda t=t: t.compute_logprobs(batch) for name, t in teachers.items()
    }


def grade_variants(run: Any, batch: Any, prompts: list[Any]) -> dict[str, Callable[[], Any]]:
    from distill_grader.client import LocalGrader

    pool_only = LocalGrader(timeout_s=10.0, fast_path=False)
    run.closers.callback(pool_only.close)
    fast = run.grader  # the trainer's own grader: fast path first

    def with_grader(grader: Any) -> Callable[[], Any]:
        def grade() -> Any:
            run.grader, previous = grader, run.grader
            try:
                return run.grade(batch, prompts)
            finally:
                run.grader = previous

        return grade

    return {"grade/pool": with_grader(pool_only), "grade/fast_path": with_grader(fast)}


class _Receiver:
    """A Ray actor that only receives: what a role call costs beyond the role's own work."""

    def rows(self, batch: Any) -> int:
        return batch.size

    def version(self, weights: Any) -> int:
        return weights.version

    def logprobs(self, batch: Any) -> Any:
        return batch.response_mask.clone()  # an [N, R] float result, as compute_logprobs returns


def ray_variants(run: Any, batch: Any) -> dict[str, Callable[[], Any]]:
    """Round trips of the step's batch to an idle actor: by value, through one ray.put, and
    with an [N, R] result coming back; and a weight sync's payload."""
    import ray

    step_bench.start_ray(1)
    actor = ray.remote(_Receiver).options(num_cpus=0).remote()
    ray.get(actor.rows.remote(batch))
    weights = run.roles.actor.get_weights()
    return {
        "ray/batch_by_value": lambda: ray.get(actor.rows.remote(batch)),
        "ray/batch_put_once": lambda: ray.get(actor.rows.remote(ray.put(batch))),
        "ray/batch_and_result": lambda: ray.get(actor.logprobs.remote(batch)),
        "ray/weights": lambda: ray.get(actor.version.remote(weights)),
        "ray/noop_call": lambda: ray.get(actor.rows.remote(batch.select(slice(0, 1)))),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    step_bench.add_work_flags(parser)
    parser.add_argument("--reps", type=int, default=7, help="repetitions of every variant")
    groups = ["actor", "teacher", "grade"]
    parser.add_argument("--only", type=lambda s: s.split(","), default=groups)
    parser.add_argument("--work", type=Path, default=Path("out/bench/ab"), help="run outputs")
    parser.add_argument("--out", type=Path, default=BENCH / "results/ab.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    step_bench.torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    case = step_bench.load_cases(args)[0]  # KL on
    options = RunOptions(
        backend="inprocess", device="cpu", output_dir=args.work, val_before_train=False,
        progress=False,
    )  # fmt: skip
    run = setup_run(case.job, options)
    try:
        spec = case.job.spec
        _, prompts = next(prompt_batches(run.train, spec.training.batch_size, spec.training.seed))
        _, batch = train_step(run, prompts)  # a real step's batch, every field filled in
        groups = {
            "actor": lambda: actor_variants(run, batch, case.job),
            "teacher": lambda: teacher_variants(run, batch, case.job),
            "grade": lambda: grade_variants(run, batch, prompts),
            "ray": lambda: ray_variants(run, batch),
        }
        results: dict[str, Any] = {}
        for group in args.only:
            results.update(interleaved(groups[group](), args.reps))
    finally:
        run.close()
    out = {
        "phases_s": results,
        "batch_rows": batch.size,
        "reps": args.reps,
        "machine": step_bench.machine(args.threads),
        "machine_load": args.machine_load,
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for name, stats in results.items():
        wall, cpu = stats["median"] * 1000, stats["cpu"]["median"] * 1000
        print(f"{name:<36} wall {wall:8.1f} ms   cpu {cpu:8.1f} ms")
    return out


if __name__ == "__main__":
    main()
