"""Side by side with TRL: the same work through TRL 1.16's trainers and through ours, in one run.

The work is the demo's job (or any DistillJob YAML given): its student and teacher, its prompts
rendered by the student's chat template, batchSize × rolloutN completions per step of at most
maxResponseLength tokens at its temperature, batchSize / ppoMiniBatchSize optimizer steps per
step. One after the other:

- KL on: TRL's `DistillationTrainer` (`trl.trainer.distillation_trainer`; on-policy, reverse KL
  to the teacher), then ours with useKlInAdvantage on, in-process and on local Ray;
- KL off: TRL's `GRPOTrainer` (β = 0, the grader's score as the reward), then ours with
  useKlInAdvantage off, in-process and on local Ray.

TRL is configured fairly: float32 (bf16 off), gradient checkpointing off, CPU, no logging, eval or
saving, a constant learning rate, the same torch thread count. DistillationTrainer generates once
per optimizer step, so an optimizer step there gets ppoMiniBatchSize × rolloutN completions (each
prompt repeated rolloutN times in its dataset); GRPOTrainer generates a whole step at once
(generation_batch_size = batchSize × rolloutN, steps_per_generation = optimizer steps per step)
like ours. One of our steps is compared with that many TRL optimizer steps.

TRL is not a project dependency: the script installs it (`pip install --no-deps --target`; its
requirements are all in the project's venv already) into --trl-dir and runs TRL in a subprocess
with that folder on PYTHONPATH.

    .venv/bin/python bench/vs_trl.py [JOB.yaml] [--steps 10] [--warmup 2] [--threads N]
        [--backends inprocess,ray] [size flags as bench/step.py] [--trl-dir out/bench/trl]
        [--machine-load TEXT] [--out bench/results/vs_trl.json]

bench/results/vs_trl.json: `speedup` = our completions/s ÷ TRL DistillationTrainer's (KL on,
in-process), `speedup_kl_off` = ours ÷ GRPOTrainer's, the same on Ray, every run's step times,
and the machine (cores, CPU model, torch threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import step as step_bench  # noqa: E402  (bench/step.py: the shared job set-up and statistics)

TRL_VERSION = "1.16.0"


# ------------------------------------------------------------------------ the TRL side (child)


def trl_rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's training prompts as TRL dataset rows (conversational `prompt` column)."""
    from distill_trainer.data import read_dataset

    records = read_dataset(cfg["train"])
    repeat = cfg["rollout_n"] if cfg["kind"] == "distill" else 1  # GRPO repeats them itself
    return [
        {"prompt": record.messages, "ground_truth": record.ground_truth}
        for record in records
        for _ in range(repeat)
    ]


def grade_reward(completions: list[Any], ground_truth: list[str], **_: Any) -> list[float]:
    """The project's grader score of each completion (GRPO's reward function)."""
    from distill_grader.grading import grade_answer

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [grade_answer(t, gt).score for t, gt in zip(texts, ground_truth, strict=True)]


def trl_arguments(cfg: dict[str, Any]) -> Any:
    """DistillationConfig or GRPOConfig for the work in `cfg`, configured fairly for CPU."""
    common = {
        "output_dir": cfg["output_dir"],
        "per_device_train_batch_size": cfg["rows_per_optimizer_step"],
        "gradient_accumulation_steps": 1,
        "max_steps": (cfg["warmup"] + cfg["steps"]) * cfg["optimizer_steps"],
        "learning_rate": cfg["learning_rate"],
        "lr_scheduler_type": "constant",
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "temperature": cfg["temperature"],
        "top_p": 1.0,
        "top_k": 0,
        "max_completion_length": cfg["response_length"],
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "report_to": "none",
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": cfg["seed"],
        "model_init_kwargs": {"dtype": "float32"},
    }
    if cfg["kind"] == "distill":
        from trl.trainer.distillation_config import DistillationConfig

        return DistillationConfig(
            **common, teacher_model_init_kwargs={"dtype": "float32"}, beta=1.0
        )
    from trl import GRPOConfig

    return GRPOConfig(
        **common,
        num_generations=cfg["rollout_n"],
        steps_per_generation=cfg["optimizer_steps"],
        num_iterations=1,
        beta=0.0,
    )


def optimizer_step_ends(trainer: Any) -> list[float]:
    """Train; perf_counter() at the start and after every optimizer step."""
    from transformers import TrainerCallback

    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())

    trainer.add_callback(Marks())
    trainer.train()
    return marks


def run_trl(cfg: dict[str, Any]) -> dict[str, Any]:
    """One TRL trainer on the work in `cfg`; seconds per our-step's worth of optimizer steps."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    torch.set_num_threads(cfg["threads"])
    dataset = Dataset.from_list(trl_rows(cfg))
    tokenizer = AutoTokenizer.from_pretrained(cfg["student"])
    args = trl_arguments(cfg)
    if cfg["kind"] == "distill":
        from trl.trainer.distillation_trainer import DistillationTrainer

        trainer = DistillationTrainer(
            model=cfg["student"],
            teacher_model=cfg["teacher"],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        from trl import GRPOTrainer

        trainer = GRPOTrainer(
            model=cfg["student"],
            reward_funcs=grade_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    marks = optimizer_step_ends(trainer)
    k = cfg["optimizer_steps"]
    steps = [marks[i + k] - marks[i] for i in range(0, len(marks) - k, k)][cfg["warmup"] :]
    final = trainer.state.log_history[-1] if trainer.state.log_history else {}
    import trl

    return {
        "trl": trl.__version__,
        "torch_threads": torch.get_num_threads(),
        "steps": steps,
        "response_length_mean": final.get("completions/mean_length"),  # over every step
    }


def trl_child(config_path: Path) -> None:
    """Entry point of the TRL subprocess: read the work, run TRL, write the step times."""
    cfg = json.loads(config_path.read_text())
    result = run_trl(cfg)
    Path(cfg["result"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------- the parent side


def ensure_trl(target: Path) -> Path:
    """TRL in its own folder (not the project's venv or lock file), installed once."""
    marker = target / f"trl-{TRL_VERSION}.dist-info"
    if marker.is_dir():
        return target
    target.mkdir(parents=True, exist_ok=True)
    # A short timeout: offline, pip's default retries would stall for minutes before failing.
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--retries", "1"]
    command += ["--timeout", "15", "--target", str(target), f"trl=={TRL_VERSION}"]
    subprocess.run(command, check=True)
    if not marker.is_dir():
        raise RuntimeError(f"pip did not install trl {TRL_VERSION} into {target}")
    return target


def trl_work(case: Any, kind: str, args: argparse.Namespace, result: Path) -> dict[str, Any]:
    """What the TRL child needs to do the case's work."""
    spec = case.job.spec
    return {
        "kind": kind,
        "student": spec.student.model,
        "teacher": (spec.teacher or spec.student).model,
        "train": spec.data.train,
        "rollout_n": spec.algorithm.rollout_n,
        "rows_per_optimizer_step": spec.training.ppo_mini_batch_size * spec.algorithm.rollout_n,
        "optimizer_steps": spec.training.batch_size // spec.training.ppo_mini_batch_size,
        "response_length": spec.rollout.max_response_length,
        "temperature": spec.rollout.temperature,
        "learning_rate": spec.training.learning_rate,
        "seed": spec.training.seed,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads": args.threads,
        "output_dir": str(result.parent / "trainer"),
        "result": str(result),
    }


def run_trl_child(work: dict[str, Any], trl_dir: Path) -> dict[str, Any]:
    """Run TRL in a subprocess with `trl_dir` on its path; its output goes to a log file."""
    folder = Path(work["result"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "work.json").write_text(json.dumps(work, indent=2))
    repo = BENCH.parent
    paths = [trl_dir, repo / "operator", repo / "trainer_image", os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths if p)}
    env["OMP_NUM_THREADS"] = str(work["threads"])
    command = [sys.executable, str(Path(__file__).resolve()), "--trl-child"]
    command.append(str(folder / "work.json"))
    with open(folder / "trl.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = (folder / "trl.log").read_text().splitlines()[-20:]
        raise RuntimeError(f"TRL {work['kind']} failed ({done.returncode}):\n" + "\n".join(tail))
    return json.loads(Path(work["result"]).read_text())


def trl_summary(result: dict[str, Any], completions: int) -> dict[str, Any]:
    """Step spread and completions/s of a TRL run (a step: one of ours' worth of work)."""
    steps = result["steps"]
    return {
        "step_s": step_bench.spread(steps),
        "completions_per_s": round(completions / statistics.median(steps), 1),
        "response_length_mean": result["response_length_mean"],
        "torch_threads": result["torch_threads"],
    }


TRL_TRAINER = {"kl_on": ("distill", "trl_distillation"), "kl_off": ("grpo", "trl_grpo")}


def measure(cases: Sequence[Any], args: argparse.Namespace, trl_dir: Path) -> dict[str, Any]:
    """Per case: TRL's trainer, then ours on each backend; each run's summary."""
    runs: dict[str, Any] = {}
    for case in cases:
        completions = step_bench.completions_per_step(case.job)
        kind, label = TRL_TRAINER[case.name.rsplit("/", 1)[-1]]
        print(f"{case.name}: TRL {kind}", flush=True)
        result = (args.work / f"{case.name}-{label}" / "result.json").resolve()
        trl_result = run_trl_child(trl_work(case, kind, args, result), trl_dir)
        runs[f"{case.name}/{label}"] = trl_summary(trl_result, completions)
        runs["trl_version"] = trl_result["trl"]
        for backend in args.backends:
            print(f"{case.name}: ours, {backend}", flush=True)
            timed = step_bench.run_ours(case, backend, args)
            runs[f"{case.name}/ours_{backend}"] = step_bench.summarize(timed, completions)
    return runs


def speedups(runs: dict[str, Any], backends: Sequence[str]) -> dict[str, float]:
    """ours ÷ TRL completions/s, KL on and off, per backend (in-process unsuffixed)."""
    out = {}
    for case, (_, label) in TRL_TRAINER.items():
        for backend in backends:
            ours = runs.get(f"{case}/ours_{backend}")
            theirs = runs.get(f"{case}/{label}")
            if ours is None or theirs is None:
                continue
            key = "speedup" + ("_kl_off" if case == "kl_off" else "")
            key += "" if backend == "inprocess" else f"_{backend}"
            out[key] = round(ours["completions_per_s"] / theirs["completions_per_s"], 3)
    return out


def work_of(case: Any, args: argparse.Namespace) -> dict[str, Any]:
    spec = case.job.spec
    return {
        "completions_per_step": step_bench.completions_per_step(case.job),
        "batch_size": spec.training.batch_size,
        "rollout_n": spec.algorithm.rollout_n,
        "max_response_length": spec.rollout.max_response_length,
        "temperature": spec.rollout.temperature,
        "optimizer_steps_per_step": spec.training.batch_size // spec.training.ppo_mini_batch_size,
        "ours_micro_batch_size": args.micro_batch_size,
        "ours_max_tokens_per_micro_batch": spec.training.max_tokens_per_micro_batch,
        "gradient_checkpointing": spec.training.gradient_checkpointing,  # TRL's: off
        "ours_old_logprobs_from_rollout": args.old_logprobs_from_rollout,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    step_bench.add_work_flags(parser)
    parser.add_argument("--trl-dir", type=Path, default=Path("out/bench/trl"), help="TRL's folder")
    parser.add_argument("--work", type=Path, default=Path("out/bench/vs_trl"), help="run outputs")
    parser.add_argument("--out", type=Path, default=BENCH / "results/vs_trl.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    step_bench.torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    load_start = os.getloadavg()[0]
    trl_dir = ensure_trl(args.trl_dir.resolve())
    cases = step_bench.load_cases(args)
    info = step_bench.machine(args.threads)
    if any(step_bench.BACKENDS[name][0] == "ray" for name in args.backends):
        info.update(step_bench.start_ray(args.threads))
    runs = measure(cases, args, trl_dir)
    info["trl"] = runs.pop("trl_version")
    results = {
        **speedups(runs, args.backends),
        "work": work_of(cases[0], args),
        "runs": runs,
        "machine": info,
        "machine_load": args.machine_load,
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for key, run in runs.items():
        print(f"{key:<28} {run['step_s']['median']:.3f} s/step  {run['completions_per_s']:.0f}/s")
    print({key: value for key, value in results.items() if key.startswith("speedup")})
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trl-child"]:
        trl_child(Path(sys.argv[2]))
    else:
        main()
