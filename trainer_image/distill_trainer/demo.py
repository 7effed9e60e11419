"""`make demo`: on-policy distillation vs pure RL, with tiny models on CPU, in a few minutes.

    python -m distill_trainer demo [--out out/demo] [--steps N] [--seeds 0 1 2] [--lanes 2]

1. data: a synthetic task, "What is 3 + 4 + 7 + 2?" (four one-digit terms), 2000 train / 200
   validation prompts, written by the same code as `python -m distill_trainer.data
   prep-arithmetic`;
2. models (built locally, cached under out/demo/cache/ by a hash of their recipe): a tiny Qwen2
   teacher trained by SFT until it solves the task, and the student: that teacher after a short
   fine-tune on three-term sums, which made it forget the four-term ones (it now writes one
   running total where they need two, and is right on about 8% of them). Recovering what a
   fine-tune made a model forget, with its own earlier checkpoint as the teacher, is one of the
   uses of on-policy distillation (Thinking Machines, "On-Policy Distillation", 2025);
3. three DistillJobs from examples/, each on every seed (training.seed: data order and sampling):
   demo-rl.yaml (GRPO on the grader's reward alone, no teacher), demo-distill.yaml (the seed's
   objective: GRPO plus the teacher's per-token KL in the advantage) and demo-reward-free.yaml
   (advEstimator none: the teacher's KL alone; the grader only measures), each run by the
   trainer's own `run_job` with its own progress bar, `lanes` runs side by side;
4. out/demo/results.json (per-seed validation curves, and the step at which each run closed half
   and 90% of the student's gap to the teacher), a table on the console and out/demo/demo.png.

The job files point at out/demo/models/{student,teacher} and out/demo/data/; the demo makes those
paths (links into the cache), so after it ran `python -m distill_trainer run
examples/demo-distill.yaml` works on its own too.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from distill_grader.grading import grade_answer
from distill_trainer import data, tiny
from distill_trainer.cli import load_document
from distill_trainer.config import RunOptions
from distill_trainer.driver import RunSummary, run_job

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
JOBS = {
    "rl": "demo-rl.yaml",
    "distill": "demo-distill.yaml",
    "reward_free": "demo-reward-free.yaml",
}
TEACHER_JOBS = ("distill", "reward_free")  # the jobs that load the teacher
GAP_FRACTIONS = (0.5, 0.9)  # milestones: shares of the student's gap to the teacher closed
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo builds; the defaults are the tuned demo (see README)."""

    out: Path = Path("out/demo")
    train_size: int = 2000
    val_size: int = 200  # greedy answers per validation: ±0.035 binomial noise at reward 0.5
    terms: int = 4  # one-digit operands per problem
    data_seed: int = 0
    teacher_model: tiny.TinyModelConfig = field(default_factory=tiny.TinyModelConfig)
    # The teacher trains until it is near-perfect (greedy 1.000 on the validation sums).
    teacher_sft: tiny.SftConfig = field(default_factory=lambda: tiny.SftConfig(steps=1200))
    # The student: the teacher fine-tuned on 900 of the 1000 three-term sums ("7,\boxed{12}": one
    # running total) for 40 steps at 3e-4 (`student_records`). That is enough to make it forget
    # four-term sums (greedy 0.08: it writes one running total, then boxes a wrong sum) while it
    # stays a few optimizer steps from the teacher, which is what a few dozen steps of any training
    # can undo on a model this small. A student trained from scratch and stopped early (the demo
    # before this one) has to learn the arithmetic itself: even SFT on the teacher's answers moved
    # that one only from 0.26 to 0.33 in 40 steps at 1e-3, and 3e-3 broke it. Fine-tuned 20 steps,
    # the student kept enough four-term skill that pure RL reached half the gap by step 30; 60 steps
    # left distillation itself short of 90% of it at step 40. Fine-tuned on all 1000 three-term sums
    # instead of these 900, it got stuck in one seed of each distillation job (at 0.63 and 0.74: it
    # boxed 20 or 21 for the sums above 20), where this student reaches 90% on every seed.
    student_terms: int = 3
    student_sft: tiny.SftConfig = field(
        default_factory=lambda: tiny.SftConfig(
            steps=40, learning_rate=3e-4, warmup_steps=10, cosine=False
        )
    )
    # training.seed of each run of each job: the table gives the spread across them.
    seeds: tuple[int, ...] = (0, 1, 2)
    # Runs side by side, each in its own process with cpu_count / lanes torch threads: two runs
    # on one thread each finish ~1.65× sooner than one after the other on two threads.
    lanes: int = 2
    steps: int | None = None  # overrides training.totalSteps of every job (None: the YAML's)
    test_freq: int | None = None  # overrides training.testFreq of every job
    overrides: tuple[str, ...] = ()  # more `--set PATH=VALUE` overrides for every job
    # In-process: the numbers are identical on local Ray (`--backend ray`, the roles colocated in
    # one Ray worker, about as fast: docs/benchmarks.md, change 11), which starts more slowly.
    backend: str = "inprocess"
    micro_batch_size: int = 256  # rows per forward pass: the whole step fits at once on CPU
    progress: bool = True


# ---------------------------------------------------------------------------------- artefacts


def build_data(cfg: DemoConfig) -> tuple[dict[str, Path], str]:
    """Write the task's parquet files; returns their paths and a key identifying the recipe."""
    paths = data.prep_arithmetic(
        cfg.out / "data",
        train=cfg.train_size,
        test=cfg.val_size,
        seed=cfg.data_seed,
        max_operand=9,
        terms=cfg.terms,
        instruction="",  # the models learn the \boxed{} format from SFT, not from the prompt
    )
    key = tiny.config_key(
        train=cfg.train_size, test=cfg.val_size, seed=cfg.data_seed, terms=cfg.terms
    )
    return paths, key


def student_records(cfg: DemoConfig) -> list[data.PromptRecord]:
    """The fine-tune that makes the student: the train split of `prep-arithmetic --terms
    <student_terms> --max-operand 9 --train 900 --test 100 --seed <data_seed + 1> --instruction
    ""` (900 of the 1000 three-term sums), built in memory."""
    count = 10**cfg.student_terms
    problems = data.arithmetic_problems(count, cfg.data_seed + 1, 9, terms=cfg.student_terms)
    rows = data.arithmetic_rows(problems[count // 10 :], "train", instruction="")
    return [data.row_to_record(row, index=i) for i, row in enumerate(rows)]


def build_models(cfg: DemoConfig, train_path: Path, data_key: str) -> dict[str, Path]:
    """SFT (or reuse) the teacher, fine-tune it into the student; link both where the job files
    expect them."""
    cache = cfg.out / "cache"
    teacher = tiny.build_sft_model(
        cache,
        "teacher",
        cfg.teacher_model,
        cfg.teacher_sft,
        data.read_dataset(str(train_path)),
        data_key,
    )
    student = tiny.build_sft_model(
        cache,
        "student",
        cfg.teacher_model,
        cfg.student_sft,
        student_records(cfg),
        tiny.config_key(terms=cfg.student_terms, seed=cfg.data_seed),
        base=teacher,
    )
    built = {"teacher": teacher, "student": student}
    links = {}
    for role, path in built.items():
        link = cfg.out / "models" / role
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(path, link.parent))
        links[role] = link
    return links


def greedy_val_reward(model_dir: Path, val_path: Path, max_new_tokens: int) -> float:
    """Mean grader score of the model's greedy answers on the validation set."""
    model, tokenizer = tiny.load(model_dir)
    records = data.read_dataset(str(val_path))
    responses = tiny.greedy_responses(model, tokenizer, records, max_new_tokens)
    scores = [
        grade_answer(r, rec.ground_truth).score for r, rec in zip(responses, records, strict=True)
    ]
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------------------- jobs


def job_overrides(cfg: DemoConfig, models: dict[str, Path], paths: dict[str, Path]) -> list[str]:
    """`--set` overrides pointing the example jobs at this demo's artefacts."""
    overrides = [
        f"student.model={models['student']}",
        f"data.train={paths['train']}",
        f"data.val={paths['test']}",
    ]
    if cfg.steps is not None:
        overrides.append(f"training.totalSteps={cfg.steps}")
    if cfg.test_freq is not None:
        overrides.append(f"training.testFreq={cfg.test_freq}")
    return [*overrides, *cfg.overrides]


def run_example(
    name: str, seed: int, cfg: DemoConfig, overrides: list[str], line: int = 0
) -> RunSummary:
    """Load examples/<job>.yaml with the overrides and the seed, as the CLI would, and train it
    (its progress bar on console line `line`)."""
    job = load_document(EXAMPLES / JOBS[name], [*overrides, f"training.seed={seed}"])
    options = RunOptions(
        backend=cfg.backend,
        device="cpu",
        output_dir=cfg.out / name / f"seed-{seed}",
        micro_batch_size=cfg.micro_batch_size,
        progress=cfg.progress,
        progress_line=line,
    )
    # A fresh run every time: the job would resume from an earlier demo's checkpoints there (and
    # refuse them when a math field such as totalSteps differs).
    shutil.rmtree(options.output_dir, ignore_errors=True)
    log.info("running %s (%s), seed %d", job.metadata.name, JOBS[name], seed)
    return run_job(job, options)


PlannedRun = tuple[str, int, list[str]]  # job name, seed, its overrides


def start_lane(threads: int) -> None:
    """A lane process: its share of the CPUs, and the console logging `main` sets up."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def run_lane(
    runs: list[PlannedRun], cfg: DemoConfig, teacher_reward: float, line: int
) -> dict[tuple[str, int], dict[str, Any]]:
    """One lane's runs, one after the other; their results.json entries."""
    return {
        (name, seed): seed_result(run_example(name, seed, cfg, overrides, line), teacher_reward)
        for name, seed, overrides in runs
    }


def run_all(
    runs: list[PlannedRun], cfg: DemoConfig, teacher_reward: float
) -> dict[tuple[str, int], dict[str, Any]]:
    """Every run, split over `cfg.lanes` processes (spawned: the parent's torch threads and
    grader pool are not forked) with the machine's CPUs shared between them."""
    lanes = max(1, min(cfg.lanes, len(runs)))
    if lanes == 1:
        return run_lane(runs, cfg, teacher_reward, 0)
    threads = max(1, (os.cpu_count() or lanes) // lanes)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        lanes, mp_context=context, initializer=start_lane, initargs=(threads,)
    ) as pool:
        futures = [
            pool.submit(run_lane, runs[lane::lanes], cfg, teacher_reward, lane)
            for lane in range(lanes)
        ]
        for future in futures:
            results.update(future.result())
    return results


def first_step_reaching(rewards: dict[int, float], target: float) -> int | None:
    """The first validated step whose reward is at least `target` (None: never in the run)."""
    return next((step for step, reward in sorted(rewards.items()) if reward >= target), None)


def seed_result(summary: RunSummary, teacher_reward: float) -> dict[str, Any]:
    """One run's results.json entry: its validation curve and its gap milestones."""
    rewards = dict(sorted(summary.val_rewards.items()))
    start = rewards[min(rewards)]
    kls = {
        str(int(m["training/step"])): m["distill/kl_per_token"]
        for m in summary.history
        if "distill/kl_per_token" in m
    }
    return {
        "val_reward_start": start,
        "val_reward_end": rewards[max(rewards)],
        "steps": summary.steps,
        "seconds": round(summary.seconds, 1),
        "final_kl_per_token": kls[max(kls, key=int)] if kls else None,
        # f of the gap closed: the reward reached start + f·(teacher − start)
        "steps_to_gap": {
            str(f): first_step_reaching(rewards, start + f * (teacher_reward - start))
            for f in GAP_FRACTIONS
        },
        "val_rewards": {str(step): reward for step, reward in rewards.items()},
        "kl_per_step": kls,
    }


def job_result(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A job's entry: every seed's result and the mean and spread across seeds; `seconds` adds
    the runs' own times (in lanes they overlap, so it is more than the job's wall time)."""
    ends = [r["val_reward_end"] for r in per_seed.values()]
    return {
        "seeds": per_seed,
        "val_reward_start": statistics.mean(r["val_reward_start"] for r in per_seed.values()),
        "val_reward_end_mean": statistics.mean(ends),
        "val_reward_end_min": min(ends),
        "val_reward_end_max": max(ends),
        "seconds": round(sum(r["seconds"] for r in per_seed.values()), 1),
    }


# ------------------------------------------------------------------------------------ reports


def _milestones(job: dict[str, Any], fraction: float) -> str:
    steps = [r["steps_to_gap"][str(fraction)] for r in job["seeds"].values()]
    return "/".join("-" if s is None else str(s) for s in steps)


def format_table(results: dict[str, Any]) -> str:
    """The console summary: teacher reference, then one row per job (seeds joined by /)."""
    lines = [
        f"teacher val reward: {results['teacher']['val_reward']:.3f}",
        f"{'job':<12}{'val start':>10}{'val end (min..max)':>24}{'50% gap':>12}{'90% gap':>12}"
        f"{'seconds':>9}",
    ]
    for name in JOBS:
        r = results[name]
        end = (
            f"{r['val_reward_end_mean']:.3f} ({r['val_reward_end_min']:.2f}.."
            f"{r['val_reward_end_max']:.2f})"
        )
        lines.append(
            f"{name:<12}{r['val_reward_start']:>10.3f}{end:>24}{_milestones(r, 0.5):>12}"
            f"{_milestones(r, 0.9):>12}{r['seconds']:>9.1f}"
        )
    return "\n".join(lines)


COLORS = {"rl": "tab:orange", "distill": "tab:blue", "reward_free": "tab:green"}
LABELS = {"rl": "pure RL", "distill": "distillation + reward", "reward_free": "reward-free"}


def plot(results: dict[str, Any], path: Path) -> None:
    """Validation reward per step (each seed faint, the mean bold) and the distillation KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_reward, ax_kl) = plt.subplots(1, 2, figsize=(11, 4))
    for name in JOBS:
        curves = [
            {int(k): v for k, v in r["val_rewards"].items()}
            for r in results[name]["seeds"].values()
        ]
        for curve in curves:
            ax_reward.plot(list(curve), list(curve.values()), color=COLORS[name], alpha=0.3, lw=1)
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [statistics.mean(c[s] for c in curves) for s in steps]
        ax_reward.plot(steps, mean, "o-", ms=3, color=COLORS[name], label=LABELS[name])
        kls = [r["kl_per_step"] for r in results[name]["seeds"].values() if r.get("kl_per_step")]
        if kls:
            k_steps = sorted(set.intersection(*(set(map(int, k)) for k in kls)))
            k_mean = [statistics.mean(k[str(s)] for k in kls) for s in k_steps]
            ax_kl.plot(k_steps, k_mean, color=COLORS[name], label=LABELS[name])
    ax_reward.axhline(results["teacher"]["val_reward"], color="gray", ls="--", label="teacher")
    n_seeds = len(results["rl"]["seeds"])
    ax_reward.set(
        xlabel="step",
        ylabel="validation reward",
        title=f"Validation reward (bold: mean of {n_seeds} seeds; faint: each)",
    )
    ax_reward.set_ylim(0, 1.02)
    ax_reward.legend(loc="lower right")
    ax_kl.set(xlabel="step", ylabel="nats / token", title="KL(student ‖ teacher) per token (mean)")
    ax_kl.text(0.98, 0.95, "pure RL: no teacher, no KL measured", transform=ax_kl.transAxes,
               ha="right", va="top", color=COLORS["rl"])  # fmt: skip
    ax_kl.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------- driver


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Build everything, run every job on every seed, write results.json and demo.png."""
    started = time.monotonic()
    cfg.out.mkdir(parents=True, exist_ok=True)
    paths, data_key = build_data(cfg)
    models = build_models(cfg, paths["train"], data_key)
    overrides = job_overrides(cfg, models, paths)
    spec = load_document(EXAMPLES / JOBS["distill"], overrides).spec
    teacher_reward = greedy_val_reward(
        models["teacher"], paths["test"], spec.rollout.max_response_length
    )
    log.info("teacher val reward %.3f", teacher_reward)
    teacher = [f"teacher.model={models['teacher']}"]
    runs = [
        (name, seed, [*overrides, *(teacher if name in TEACHER_JOBS else [])])
        for seed in cfg.seeds
        for name in JOBS
    ]
    done = run_all(runs, cfg, teacher_reward)
    results: dict[str, Any] = {"teacher": {"val_reward": teacher_reward}}
    for name in JOBS:
        results[name] = job_result({str(seed): done[name, seed] for seed in cfg.seeds})
    results["total_seconds"] = round(time.monotonic() - started, 1)
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, cfg.out / "demo.png")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m distill_trainer demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DemoConfig.out)
    parser.add_argument("--steps", type=int, default=None, help="training steps of each job")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DemoConfig.seeds))
    parser.add_argument("--backend", choices=["ray", "inprocess"], default=DemoConfig.backend)
    parser.add_argument(
        "--lanes", type=int, default=DemoConfig.lanes, help="runs side by side (processes)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field of every job, e.g. training.learningRate=5e-4 (repeatable)",
    )
    parser.add_argument(
        "--student-sft-steps",
        type=int,
        default=None,
        help="steps of the fine-tune that turns the teacher into the student",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    cfg = DemoConfig()
    cfg = replace(
        cfg,
        out=args.out,
        steps=args.steps,
        seeds=tuple(args.seeds),
        backend=args.backend,
        lanes=args.lanes,
        overrides=tuple(args.overrides),
        progress=not args.no_progress,
        student_sft=replace(cfg.student_sft, steps=args.student_sft_steps or cfg.student_sft.steps),
    )
    results = run_demo(cfg)
    print(format_table(results))
    print(f"total {results['total_seconds']:.0f}s; plot {cfg.out / 'demo.png'}")


if __name__ == "__main__":
    main()
