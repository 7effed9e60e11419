"""Step benchmark: where a training step's time goes, and how far it is from the physical floor.

For each job (by default the demo's, built on the fly like `make demo` does; or any DistillJob
YAML given as an argument), with the teacher's KL on and off, the trainer's own `run_job` runs
--warmup + --steps steps in-process and on local Ray. The driver records `timing_s/<phase>` for
every phase of every step; here each phase, the whole step and the overhead (step − sum of the
phases) get a median and a spread over the steps after the warm-up.

In the same run the floor does the physical parts of a step on the same models and batches in
one process with plain torch/transformers: HF generate, a student forward, a teacher forward (KL
on) and one forward+backward+AdamW per optimizer step, with nothing else in between.

    .venv/bin/python bench/step.py [JOB.yaml ...] [--steps 10] [--warmup 2] [--rounds 1]
        [--backends inprocess,ray[,ray_separate]] [--kl on,off] [--threads N]
        [--micro-batch-size 1024] [--[no-]gradient-checkpointing]
        [--[no-]old-logprobs-from-rollout] [--set PATH=VALUE]
        [--batch-size B] [--rollout-n N] [--response-length R] [--ppo-mini-batch-size M]
        [--train-size 2000] [--teacher-sft-steps 1200] [--student-sft-steps 40]
        [--demo-out out/demo] [--machine-load TEXT] [--out bench/results/step.json]

bench/results/step.json has, at the top, `overhead_fraction` (the worst over our runs of median
overhead ÷ median step) and `floor_ratio` (the worst over our runs of median step ÷ the median
floor step with the same KL setting), then per run the phase table, and per phase how many
milliseconds it costs beyond the floor's counterpart. A run of ours without the old-logprob pass
(the engine's exact logprobs serve, the default on CPU) also gets `floor_ratio_same_work`: its step
÷ the floor step less the floor's student forward. Wall times depend on whatever else runs on
the machine: the file records the CPU, the thread count and the load average (start, end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in ("operator", "trainer_image"):  # run from a checkout without an editable install
    if str(REPO / _path) not in sys.path:
        sys.path.insert(0, str(REPO / _path))
for _name, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402  (after the environment above)

from distill_api import DistillJob  # noqa: E402
from distill_trainer import demo  # noqa: E402
from distill_trainer.cli import load_document  # noqa: E402
from distill_trainer.config import RunOptions  # noqa: E402
from distill_trainer.data import read_dataset  # noqa: E402
from distill_trainer.driver import run_job  # noqa: E402
from distill_trainer.prompts import encode_prompts, prompt_batches  # noqa: E402

# Timed by the driver on the last step but outside the step itself.
OUTSIDE_STEP = ("timing_s/validate", "timing_s/checkpoint")
# Which floor part each of our phases stands against (phases without one are pure cost).
FLOOR_PART = {
    "generate": "generate",
    "old_logprob": "student_fwd",
    "teacher_logprob": "teacher_fwd",
    "update_actor": "update",
}


# ------------------------------------------------------------------------------------- inputs


@dataclass
class Timed:
    """The steps of one run after the warm-up: {phase: seconds} (with "step"), response lengths."""

    steps: list[dict[str, float]] = field(default_factory=list)
    response_lengths: list[float] = field(default_factory=list)  # mean tokens per response

    def extend(self, other: Timed) -> None:
        self.steps += other.steps
        self.response_lengths += other.response_lengths


@dataclass(frozen=True)
class Case:
    """One job to measure, with the teacher's KL on or off."""

    name: str  # e.g. "kl_on"
    job: DistillJob


def size_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` overrides from the size flags (only the ones given)."""
    fields = {
        # TRL's trainers are configured without it and the floor has none: the same work here.
        "training.gradientCheckpointing": str(args.gradient_checkpointing).lower(),
        "training.batchSize": args.batch_size,
        "algorithm.rolloutN": args.rollout_n,
        "rollout.maxResponseLength": args.response_length,
        "training.ppoMiniBatchSize": args.ppo_mini_batch_size,
    }
    return [f"{path}={value}" for path, value in fields.items() if value is not None]


def demo_config(args: argparse.Namespace) -> demo.DemoConfig:
    """The demo's recipe with the size flags applied (defaults: exactly `make demo`'s)."""
    cfg = demo.DemoConfig(out=args.demo_out)
    return replace(
        cfg,
        train_size=args.train_size,
        val_size=max(8, args.train_size // 10),
        teacher_sft=replace(cfg.teacher_sft, steps=args.teacher_sft_steps),
        student_sft=replace(cfg.student_sft, steps=args.student_sft_steps),
    )


# The work every result in docs/benchmarks.md measures: the demo's distill job at 32 prompts a
# step (4 optimizer steps of 64 completions), as the demo ran until it went to 16; the size flags
# still override it.
DEMO_WORK = ["training.batchSize=32"]


def demo_job_file(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Build (or reuse) the demo's data and models; the distill example and its overrides."""
    cfg = demo_config(args)
    paths, data_key = demo.build_data(cfg)
    models = demo.build_models(cfg, paths["train"], data_key)
    overrides = [*demo.job_overrides(cfg, models, paths), *DEMO_WORK]
    return demo.EXAMPLES / demo.JOBS["distill"], [*overrides, f"teacher.model={models['teacher']}"]


def load_cases(args: argparse.Namespace) -> list[Case]:
    """Each job with KL on and KL off (a job without a teacher gets the frozen student's copy)."""
    files = [(path, []) for path in args.jobs] if args.jobs else [demo_job_file(args)]
    steps = [f"training.totalSteps={args.warmup + args.steps}"]
    cases = []
    for path, base in files:
        overrides = [*base, *size_overrides(args), *args.overrides, *steps]
        for kl in (kl == "on" for kl in args.kl):
            job = load_document(Path(path), [*overrides, f"algorithm.useKlInAdvantage={kl}"])
            prefix = "" if not args.jobs else f"{job.metadata.name}/"
            cases.append(Case(f"{prefix}kl_{'on' if kl else 'off'}", job))
    return cases


# ------------------------------------------------------------------------------ statistics


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and range of the values, in seconds."""
    ordered = sorted(values)
    p25, p75 = (
        statistics.quantiles(ordered, n=4, method="inclusive")[::2]
        if len(ordered) > 1
        else (ordered[0], ordered[0])
    )
    return {
        "median": round(statistics.median(ordered), 5),
        "p25": round(p25, 5),
        "p75": round(p75, 5),
        "min": round(ordered[0], 5),
        "max": round(ordered[-1], 5),
        "n": len(ordered),
    }


def summarize(timed: Timed, completions: int) -> dict[str, Any]:
    """Phase table of a run's timed steps, its overhead and throughput."""
    steps = timed.steps
    phases = sorted({name for step in steps for name in step} - {"step"})
    overhead = [step["step"] - sum(step.get(p, 0.0) for p in phases) for step in steps]
    step_median = statistics.median(step["step"] for step in steps)
    return {
        "step_s": spread([step["step"] for step in steps]),
        "phases_s": {p: spread([step.get(p, 0.0) for step in steps]) for p in phases},
        "overhead_s": spread(overhead),
        "overhead_fraction": round(statistics.median(overhead) / step_median, 4),
        "completions_per_s": round(completions / step_median, 1),
        "response_length_mean": round(statistics.mean(timed.response_lengths), 2),
    }


def step_phases(history: Sequence[dict[str, float]], warmup: int) -> Timed:
    """Phase times and response lengths of the steps after the warm-up, from run_job's history."""
    steps = [m for m in history if "timing_s/step" in m][warmup:]
    phases = [
        {
            key.removeprefix("timing_s/"): value
            for key, value in m.items()
            if key.startswith("timing_s/") and key not in OUTSIDE_STEP
        }
        for m in steps
    ]
    return Timed(phases, [m["response_length/mean"] for m in steps])


# ----------------------------------------------------------------------------------- ours


# Our runs by name: the backend, and whether a local Ray colocates the roles (RunOptions.colocate).
BACKENDS = {"inprocess": ("inprocess", True), "ray": ("ray", True), "ray_separate": ("ray", False)}


def run_ours(case: Case, backend: str, args: argparse.Namespace) -> Timed:
    """Train the job for warm-up + timed steps with our trainer; per-step phase times."""
    output_dir = args.work / f"{case.name}-{backend}".replace("/", "-")
    shutil.rmtree(output_dir, ignore_errors=True)  # a previous run's checkpoint would resume
    options = RunOptions(
        backend=BACKENDS[backend][0],
        colocate=BACKENDS[backend][1],
        device="cpu",
        output_dir=output_dir,
        micro_batch_size=args.micro_batch_size,
        old_logprobs_from_rollout=args.old_logprobs_from_rollout,
        val_before_train=False,
        max_val_prompts=1,  # the last step validates (outside the step's timing): keep it cheap
        progress=False,
    )
    summary = run_job(case.job, options)
    return step_phases(summary.history, args.warmup)


def start_ray(threads: int) -> dict[str, Any]:
    """A local Ray kept up across runs (run_job then leaves it alone); what its actors see."""
    import ray

    from distill_trainer.roles.group import init_ray

    init_ray(None)

    @ray.remote(num_cpus=0)  # as the role actors: no CPU reservation
    def probe() -> int:
        return torch.get_num_threads()

    return {"ray": ray.__version__, "torch_threads_in_actors": ray.get(probe.remote())}


# ----------------------------------------------------------------------------------- floor


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    is_eos = (response_ids == eos_id).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).long()


def token_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """[N, width] logprobs of the last `width` tokens of each row (one forward pass)."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1
    ).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -width:, None]).squeeze(-1)


def floor_update(
    student: Any, optimizer: Any, ids: torch.Tensor, mask: torch.Tensor, width: int, rows: int
) -> None:
    """One forward+backward+AdamW step per mini-batch of `rows` rows (policy-gradient loss)."""
    advantages = torch.randn(ids.shape[0], 1)
    for index in torch.randperm(ids.shape[0]).split(rows):
        logprobs = token_logprobs(student, ids[index], mask[index], width)
        response = mask[index, -width:]
        loss = -(logprobs * advantages[index] * response).sum() / response.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()


def floor_step(
    models: dict[str, Any], batch: dict[str, torch.Tensor], job: DistillJob
) -> tuple[dict[str, float], float]:
    """The physical parts of one step, each timed ({part: seconds} plus "step"), and the mean
    response length."""
    spec, tokenizer, student = job.spec, models["tokenizer"], models["student"]
    times: dict[str, float] = {}
    started = last = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal last
        times[part], last = time.perf_counter() - last, time.perf_counter()

    with torch.inference_mode():
        out = student.generate(
            **batch,
            do_sample=True,
            temperature=spec.rollout.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=spec.rollout.max_response_length,
            num_return_sequences=spec.algorithm.rollout_n,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    width = out.shape[1] - batch["input_ids"].shape[1]
    prompt_mask = batch["attention_mask"].repeat_interleave(spec.algorithm.rollout_n, 0)
    mask = torch.cat([prompt_mask, response_mask(out[:, -width:], tokenizer.eos_token_id)], 1)
    lap("generate")
    with torch.inference_mode():
        token_logprobs(student, out, mask, width)
        lap("student_fwd")
        if "teacher" in models:
            token_logprobs(models["teacher"], out, mask, width)
            lap("teacher_fwd")
    rows = spec.training.ppo_mini_batch_size * spec.algorithm.rollout_n
    floor_update(student, models["optimizer"], out.clone(), mask, width, rows)
    lap("update")
    times["step"] = time.perf_counter() - started
    return times, mask[:, -width:].sum(1).float().mean().item()


def load_floor_models(job: DistillJob) -> dict[str, Any]:
    """The job's student (trainable, with AdamW), its teacher when KL is on, the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = job.spec
    tokenizer = AutoTokenizer.from_pretrained(spec.student.model)
    tokenizer.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(spec.student.model, dtype=torch.float32).eval()
    models = {"tokenizer": tokenizer, "student": student}
    models["optimizer"] = torch.optim.AdamW(
        student.parameters(), lr=spec.training.learning_rate, weight_decay=0.01
    )
    if spec.needs_teacher:
        teacher_path = (spec.teacher or spec.student).model
        teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
        models["teacher"] = teacher.requires_grad_(False)
    return models


def run_floor(case: Case, args: argparse.Namespace) -> Timed:
    """The floor's per-step part times on the job's own prompt batches (after the warm-up)."""
    spec = case.job.spec
    torch.manual_seed(spec.training.seed)
    models = load_floor_models(case.job)
    tokenizer = models["tokenizer"]
    records = read_dataset(spec.data.train)
    prompts = encode_prompts(tokenizer, records, spec.rollout.max_prompt_length)
    batches = prompt_batches(prompts, spec.training.batch_size, spec.training.seed)
    timed = Timed()
    for index in range(args.warmup + args.steps):
        _, chosen = next(batches)
        batch = tokenizer.pad({"input_ids": [p.token_ids for p in chosen]}, return_tensors="pt")
        times, length = floor_step(models, dict(batch), case.job)
        if index >= args.warmup:
            timed.extend(Timed([times], [length]))
    return timed


# ------------------------------------------------------------------------------------ report


def completions_per_step(job: DistillJob) -> int:
    return job.spec.training.batch_size * job.spec.algorithm.rollout_n


def versus_floor(ours: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """Per phase: our median, the floor part's median and the difference, in milliseconds."""
    rows = {}
    for phase, stats in ours["phases_s"].items():
        part = FLOOR_PART.get(phase)
        floor_s = floor["phases_s"][part]["median"] if part in floor["phases_s"] else 0.0
        rows[phase] = {
            "ours_ms": round(stats["median"] * 1000, 1),
            "floor_ms": round(floor_s * 1000, 1),
            "extra_ms": round((stats["median"] - floor_s) * 1000, 1),
        }
    rows["overhead"] = {
        "ours_ms": round(ours["overhead_s"]["median"] * 1000, 1),
        "floor_ms": 0.0,
        "extra_ms": round(ours["overhead_s"]["median"] * 1000, 1),
    }
    return rows


def machine(threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    import transformers

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def measure(cases: Sequence[Case], args: argparse.Namespace) -> dict[str, Timed]:
    """Every (case, runner) --rounds times, the order reversed every other round; step lists."""
    runners = ["floor", *args.backends]
    plan = [(case, runner) for case in cases for runner in runners]
    steps: dict[str, Timed] = {}
    for round_index in range(args.rounds):
        for case, runner in plan if round_index % 2 == 0 else plan[::-1]:
            print(f"round {round_index + 1}: {case.name} / {runner}", flush=True)
            timed = run_floor(case, args) if runner == "floor" else run_ours(case, runner, args)
            steps.setdefault(f"{case.name}/{runner}", Timed()).extend(timed)
    return steps


def report(steps: dict[str, Timed], cases: Sequence[Case]) -> dict[str, Any]:
    """Per-run summaries; ours also get floor_ratio and the per-phase cost beyond the floor."""
    completions = {case.name: completions_per_step(case.job) for case in cases}
    runs: dict[str, Any] = {}
    for key, timed in steps.items():
        case_name, runner = key.rsplit("/", 1)
        runs[key] = summarize(timed, completions[case_name])
        if runner == "floor":
            runs[key].pop("overhead_fraction")
    for key, run in runs.items():
        case_name, runner = key.rsplit("/", 1)
        floor = runs.get(f"{case_name}/floor")
        if runner != "floor" and floor is not None:
            run["floor_ratio"] = round(run["step_s"]["median"] / floor["step_s"]["median"], 3)
            run["vs_floor_ms"] = versus_floor(run, floor)
            if "old_logprob" not in run["phases_s"]:  # the engine's logprobs: no student pass
                same_work = floor["step_s"]["median"] - floor["phases_s"]["student_fwd"]["median"]
                run["floor_ratio_same_work"] = round(run["step_s"]["median"] / same_work, 3)
    return runs


def markdown_table(runs: dict[str, Any]) -> str:
    """The docs/benchmarks.md table of the runs."""
    lines = [
        "| run | s/step (median) | p25–p75 | completions/s | × floor | overhead |",
        "|---|---|---|---|---|---|",
    ]
    for key, run in runs.items():
        step = run["step_s"]
        ratio = run.get("floor_ratio", 1.0 if key.endswith("/floor") else None)
        overhead = run.get("overhead_fraction")
        lines.append(
            f"| {key} | {step['median']:.3f} | {step['p25']:.3f}–{step['p75']:.3f} "
            f"| {run['completions_per_s']:.0f} | {'—' if ratio is None else f'{ratio:.2f}'} "
            f"| {'—' if overhead is None else f'{overhead:.1%}'} |"
        )
    return "\n".join(lines)


def config_of(cases: Sequence[Case], args: argparse.Namespace) -> dict[str, Any]:
    spec = cases[0].job.spec
    return {
        "jobs": [str(p) for p in args.jobs] or ["examples/demo-distill.yaml (demo models)"],
        "completions_per_step": completions_per_step(cases[0].job),
        "batch_size": spec.training.batch_size,
        "rollout_n": spec.algorithm.rollout_n,
        "max_response_length": spec.rollout.max_response_length,
        "optimizer_steps_per_step": spec.training.batch_size // spec.training.ppo_mini_batch_size,
        "micro_batch_size": args.micro_batch_size,
        "max_tokens_per_micro_batch": spec.training.max_tokens_per_micro_batch,
        "gradient_checkpointing": spec.training.gradient_checkpointing,
        "old_logprobs_from_rollout": args.old_logprobs_from_rollout,
        "timed_steps": args.steps * args.rounds,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
    }


def add_work_flags(parser: argparse.ArgumentParser) -> None:
    """The flags bench/step.py and bench/vs_trl.py share: the jobs, their sizes, the timing."""
    parser.add_argument("jobs", nargs="*", type=Path, help="DistillJob files (default: the demo)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed, per run")
    parser.add_argument(
        "--backends", type=backend_list, default=["inprocess", "ray"], help=", ".join(BACKENDS)
    )
    parser.add_argument("--kl", type=lambda s: s.split(","), default=["on", "off"], help="on,off")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--micro-batch-size", type=int, default=RunOptions().micro_batch_size)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="training.gradientCheckpointing for ours (default off, as TRL's and the floor)",
    )
    parser.add_argument(
        "--old-logprobs-from-rollout",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="RunOptions.old_logprobs_from_rollout for ours (default unset: on where the "
        "engine's logprobs are exact, as the HF engine's on CPU; then no old-logprob pass, as TRL)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="P=V")
    for flag in ("batch-size", "rollout-n", "response-length", "ppo-mini-batch-size"):
        parser.add_argument(f"--{flag}", type=int, default=None, help="overrides the job's")
    defaults = demo.DemoConfig()
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--teacher-sft-steps", type=int, default=defaults.teacher_sft.steps)
    parser.add_argument("--student-sft-steps", type=int, default=defaults.student_sft.steps)
    parser.add_argument("--demo-out", type=Path, default=Path("out/demo"), help="demo artefacts")
    parser.add_argument("--machine-load", default="not recorded", help="a note on other load")


def backend_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}: choose from {', '.join(BACKENDS)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_work_flags(parser)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run, order alternating")
    parser.add_argument("--work", type=Path, default=Path("out/bench/step"), help="run outputs")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/step.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Ray's actors inherit it
    load_start = os.getloadavg()[0]
    cases = load_cases(args)
    info = machine(args.threads)
    if any(BACKENDS[name][0] == "ray" for name in args.backends):
        info.update(start_ray(args.threads))
    runs = report(measure(cases, args), cases)
    ours = {key: run for key, run in runs.items() if "floor_ratio" in run}
    results = {
        "overhead_fraction": max(run["overhead_fraction"] for run in ours.values()),
        "floor_ratio": max(run["floor_ratio"] for run in ours.values()),
        "worst_of": "the maxima over our runs (KL on/off × backends)",
        "config": config_of(cases, args),
        "runs": runs,
        "machine": info,
        "machine_load": args.machine_load,
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(runs))
    print(f"overhead_fraction {results['overhead_fraction']}, floor_ratio {results['floor_ratio']}")
    return results


if __name__ == "__main__":
    main()
