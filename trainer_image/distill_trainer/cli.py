"""Command line: run a DistillJob file with the trainer.

    python -m distill_trainer run job.yaml [--set training.batchSize=8 ...]
        [--backend inprocess|ray] [--device auto|cpu|cuda] [--metrics-port 9400]
        [--output-dir out/run] [--resume-from URI] [--force-resume]

The file is the same DistillJob YAML a user would `kubectl apply` (JSON works too). `--set` paths
are camelCase, relative to `spec` unless they start with spec/metadata/apiVersion/kind; values are
parsed as YAML (1.2's core schema: `010` is ten, `no` and `1:30` are strings). Overrides are
applied before validation, so a bad value is reported like a bad field in the file: one line per
error naming the field, exit code 2.

A run continues from the job's newest committed checkpoint under its checkpoint URI when there is
one; `--resume-from` names a checkpoint (`<uri>/global_step_<N>`) instead, and `--force-resume`
resumes one whose math-changing spec fields differ (refused otherwise). See docs/checkpoints.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distill_api import DistillJob, format_validation_error, load_job
from distill_trainer.config import RunOptions

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
_ROOT_KEYS = ("spec", "metadata", "apiVersion", "kind")


class _OverrideLoader(yaml.SafeLoader):
    """PyYAML with YAML 1.2's core-schema scalars. PyYAML reads YAML 1.1, where `010` is eight,
    `1:30` is ninety and `no` is False: a value typed after `--set` would silently change."""


_YAML11_SCALARS = {f"tag:yaml.org,2002:{kind}" for kind in ("bool", "int", "float")}
_OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_SCALARS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?[0-9]+$", "-+0123456789"),
    (
        "float",
        r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"
        r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$",
        "-+0123456789.",
    ),
):
    _OverrideLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), _first)
# Decimal only: SafeLoader's constructor would read the leading zero of `010` as octal again.
_OverrideLoader.add_constructor(
    "tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node))
)


class InputError(Exception):
    """Bad command-line input; each line of `lines` is printed as one error."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.batchSize=8` → (["spec", "training", "batchSize"], 8)."""
    path, sep, raw = text.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise InputError(f"--set {text!r}: expected PATH=VALUE, e.g. training.batchSize=8")
    if keys[0] not in _ROOT_KEYS:
        keys = ["spec", *keys]
    try:
        value = yaml.load(raw, Loader=_OverrideLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise InputError(f"--set {text!r}: value is not a YAML scalar ({err})") from None
    return keys, value


def apply_override(document: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set document[k0][k1]…= value, creating missing (or null: `teacher:`) mappings on the way."""
    node = document
    for depth, key in enumerate(keys[:-1]):
        if node.get(key) is None:
            node[key] = {}
        child = node[key]
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise InputError(f"--set {'.'.join(keys)}: {where} is not a mapping")
        node = child
    node[keys[-1]] = value


def load_document(path: Path, overrides: Sequence[str]) -> DistillJob:
    """Read the job file, apply `--set` overrides, validate; InputError on any problem."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML or JSON ({err})") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: expected a DistillJob mapping, got {type(document).__name__}")
    for text in overrides:
        apply_override(document, *parse_override(text))
    try:
        return load_job(document)
    except ValidationError as err:
        raise InputError(*validation_lines(err)) from None


def validation_lines(err: ValidationError) -> list[str]:
    """One `field.path: message` line per error (the API's own formatting)."""
    return format_validation_error(err).splitlines()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill_trainer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train a DistillJob (YAML or JSON file)")
    run.add_argument("job", type=Path, help="DistillJob file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. training.batchSize=8 (repeatable)",
    )
    run.add_argument("--backend", choices=["inprocess", "ray"], default="ray")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    run.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (0: any)")
    run.add_argument("--output-dir", type=Path, default=Path("out/run"))
    run.add_argument(
        "--micro-batch-size",
        type=int,
        default=RunOptions().micro_batch_size,
        help="most rows per forward pass (the token budget training.maxTokensPerMicroBatch "
        "sizes them)",
    )
    run.add_argument(
        "--max-val-prompts", type=int, default=None, help="validate on the first N prompts only"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--no-colocate",
        action="store_true",
        help="local Ray on CPU: a worker process per role, as on a cluster (default: one "
        "process for all roles when each has one rank)",
    )
    run.add_argument(
        "--resume-from",
        metavar="URI",
        default=None,
        help="continue from this checkpoint (s3://bucket/prefix/global_step_N or a path); "
        "default: the job's newest committed checkpoint, if any",
    )
    run.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even if the checkpoint's math-changing spec fields differ",
    )
    # Listed here; `main` hands its arguments to distill_trainer/demo.py's own parser.
    commands.add_parser(
        "demo", help="make demo: on-policy distillation vs pure RL with tiny models on CPU"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        # From here, not `python -m distill_trainer.demo`: every grading worker (forkserver)
        # imports its parent's main module first, unless that is a package's __main__; the demo
        # module brings torch and transformers, seconds of CPU per worker of every run.
        from distill_trainer.demo import main as demo_main

        demo_main(argv[1:])
        return 0
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        job = load_document(args.job, args.overrides)
        options = RunOptions(
            backend=args.backend,
            device=args.device,
            output_dir=args.output_dir,
            metrics_port=args.metrics_port,
            micro_batch_size=args.micro_batch_size,
            max_val_prompts=args.max_val_prompts,
            progress=not args.no_progress,
            colocate=not args.no_colocate,
            resume_from=args.resume_from,
            force_resume=args.force_resume,
        )
    except InputError as err:
        return _fail(f"invalid DistillJob {args.job}", err.lines)
    except ValidationError as err:
        return _fail("invalid options", validation_lines(err))
    from distill_trainer.checkpoint import CheckpointError
    from distill_trainer.driver import run_job  # heavy imports (torch, transformers) after checks
    from distill_trainer.setup import JobInputError

    try:
        summary = run_job(job, options)
    except (JobInputError, CheckpointError) as err:
        return _fail(f"cannot run {job.metadata.name}", [str(err)])
    val = ", ".join(f"step {step}: {reward:.3f}" for step, reward in summary.val_rewards.items())
    print(
        f"{summary.job_name}: {summary.steps} steps in {summary.seconds:.1f}s; "
        f"val reward {val or 'not measured'}; metrics in {summary.metrics_path}"
    )
    return 0


def _fail(headline: str, lines: Sequence[str]) -> int:
    print(f"error: {headline}:", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    return EXIT_BAD_INPUT
