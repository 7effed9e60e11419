"""Prompt datasets: the parquet format the trainer reads, and the tools that write it.

One row per prompt, in the seed's columns (the layout verl's examples use):

    prompt        list of {"role", "content"}  the chat messages shown to the student
    reward_model  {"style": "rule", "ground_truth": str}
    data_source   str   where the row came from (the grader may dispatch on it)
    ability       str   "math"
    extra_info    {"split", "index", ...}

`read_dataset(uri)` reads such a file from a local path or `s3://bucket/key` (boto3, honouring
AWS_ENDPOINT_URL for MinIO and friends). Two writers:

    python -m distill_trainer.data prep-math --out DIR          # MATH-lighteval from the HF Hub
    python -m distill_trainer.data prep-arithmetic --out DIR    # synthetic, offline

Both write DIR/train.parquet and DIR/test.parquet.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distill_grader.extract import last_boxed
from distill_grader.schema import MAX_SOURCE_CHARS

log = logging.getLogger(__name__)

MATH_DATASET = "DigitalLearningGmbH/MATH-lighteval"
MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
# Tiny character-level models pay for every prompt character, so the synthetic task asks for the
# boxed answer in fewer words than the MATH instruction.
ARITHMETIC_INSTRUCTION = "Answer in \\boxed{}."
ARITHMETIC_SOURCE = "synthetic/arithmetic"
REQUIRED_COLUMNS = ("prompt", "reward_model", "data_source")


@dataclass(frozen=True)
class PromptRecord:
    """One training or validation prompt, as the trainer consumes it."""

    messages: list[dict[str, str]]
    ground_truth: str
    data_source: str
    extra_info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- reading


def read_dataset(uri: str) -> list[PromptRecord]:
    """Read a prompt parquet from a local path or `s3://bucket/key` into records.

    Raises ValueError naming the column (and row) when the file does not follow the format.
    """
    if uri.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="distill-data-") as tmp:
            local = Path(tmp) / "data.parquet"
            _download_s3(uri, local)
            return _read_parquet(local, uri)
    path = Path(uri)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {uri!r} does not exist")
    return _read_parquet(path, uri)


def _download_s3(uri: str, dest: Path) -> None:
    import boto3  # imported lazily: local runs never need it
    from botocore.exceptions import ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"dataset URI {uri!r} must look like s3://bucket/key")
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    client = boto3.client("s3", endpoint_url=endpoint)
    log.info("downloading %s (endpoint %s)", uri, endpoint or "AWS")
    try:
        client.download_file(bucket, key, str(dest))
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise FileNotFoundError(f"dataset {uri!r} does not exist ({code})") from err
        raise


def _read_parquet(path: Path, uri: str) -> list[PromptRecord]:
    table = pq.read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"dataset {uri!r} lacks column(s) {', '.join(missing)}; "
            f"it has {', '.join(table.column_names)}"
        )
    return [row_to_record(row, uri, i) for i, row in enumerate(table.to_pylist())]


def row_to_record(row: dict[str, Any], uri: str = "<rows>", index: int = 0) -> PromptRecord:
    """Validate one parquet row (as a dict) and turn it into a PromptRecord."""
    where = f"dataset {uri!r} row {index}"
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: column 'prompt' must be a non-empty list of messages")
    for message in prompt:
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise ValueError(f"{where}: column 'prompt' holds a message without role/content")
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise ValueError(f"{where}: column 'reward_model' lacks 'ground_truth'")
    truth = reward_model["ground_truth"]
    if isinstance(truth, bool) or not isinstance(truth, str | int | float):
        raise ValueError(  # str() of a list would be an answer nothing can equal
            f"{where}: column 'reward_model' has a ground_truth of type {type(truth).__name__}: "
            "it must be one answer, a string or a number"
        )
    data_source = row.get("data_source")
    if not isinstance(data_source, str) or not 0 < len(data_source) <= MAX_SOURCE_CHARS:
        raise ValueError(  # the grader takes at most MAX_SOURCE_CHARS: refused here, not mid-run
            f"{where}: column 'data_source' must be a non-empty string of at most "
            f"{MAX_SOURCE_CHARS} characters"
        )
    return PromptRecord(
        messages=[{"role": str(m["role"]), "content": str(m["content"])} for m in prompt],
        ground_truth=str(reward_model["ground_truth"]),
        data_source=data_source,
        extra_info=dict(row.get("extra_info") or {}),
    )


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write seed-format rows to a parquet file (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return path


def make_row(
    content: str, ground_truth: str, data_source: str, split: str, index: int, **extra: Any
) -> dict[str, Any]:
    """A row in the seed's columns: one user message and a rule-based reward."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": content}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"split": split, "index": index, **extra},
    }


# ------------------------------------------------------------------------------------------ MATH


def math_rows(examples: Iterable[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """MATH-lighteval examples ({problem, solution, level, type}) to seed-format rows.

    The ground truth is the solution's last boxed expression, found by the grader's own
    extraction (so training labels and grading agree); examples without one are dropped (their
    reward would be unknowable) and counted in the log.
    """
    rows, dropped = [], 0
    for index, example in enumerate(examples):
        answer = last_boxed(example["solution"])
        if answer is None:
            dropped += 1
            continue
        content = f"{example['problem']} {MATH_INSTRUCTION}"
        extra = {k: example[k] for k in ("level", "type") if k in example}
        rows.append(make_row(content, answer, MATH_DATASET, split, index, **extra))
    if dropped:
        log.warning("MATH %s: dropped %d examples without a \\boxed{} answer", split, dropped)
    return rows


def prep_math(out: Path) -> dict[str, Path]:
    """Download MATH-lighteval (needs network) and write out/train.parquet, out/test.parquet."""
    from datasets import load_dataset  # heavy and network-bound: only this command needs it

    dataset = load_dataset(MATH_DATASET)
    return {
        split: write_rows(math_rows(dataset[split], split), out / f"{split}.parquet")
        for split in ("train", "test")
    }


# ------------------------------------------------------------------------------------ arithmetic

# A problem: its operands and the operators between them, e.g. ((3, 4, 7), ("+", "*")).
Problem = tuple[tuple[int, ...], tuple[str, ...]]
OPERATORS = "+-*"


def arithmetic_problems(
    count: int, seed: int, max_operand: int, ops: str = "+", terms: int = 2
) -> list[Problem]:
    """`count` distinct problems of `terms` operands in [0, max_operand], in a seeded order."""
    if not ops or set(ops) - set(OPERATORS):
        raise ValueError(f"ops must be made of {OPERATORS!r}, got {ops!r}")
    if terms < 2 or max_operand < 0:
        raise ValueError(f"need terms >= 2 and max_operand >= 0, got {terms}, {max_operand}")
    radices = [max_operand + 1] * terms + [len(ops)] * (terms - 1)
    space = math.prod(radices)
    if count > space:
        raise ValueError(
            f"asked for {count} distinct problems but terms={terms}, max_operand={max_operand} "
            f"and ops {ops!r} allow only {space}"
        )
    problems = []
    for code in random.Random(seed).sample(range(space), count):
        digits = []
        for radix in radices:
            code, digit = divmod(code, radix)
            digits.append(digit)
        problems.append((tuple(digits[:terms]), tuple(ops[d] for d in digits[terms:])))
    return problems


def evaluate(problem: Problem) -> int:
    """The value of a problem with the usual precedence (* before + and -)."""
    operands, operators = problem
    total, term = 0, operands[0]
    sign = 1
    for op, value in zip(operators, operands[1:], strict=True):
        if op == "*":
            term *= value
            continue
        total += sign * term
        sign, term = (1 if op == "+" else -1), value
    return total + sign * term


def problem_text(problem: Problem) -> str:
    """ "3 + 4 * 7" """
    operands, operators = problem
    parts = [str(operands[0])]
    for op, value in zip(operators, operands[1:], strict=True):
        parts += [op, str(value)]
    return " ".join(parts)


def arithmetic_rows(
    problems: Sequence[Problem], split: str, instruction: str = ARITHMETIC_INSTRUCTION
) -> list[dict[str, Any]]:
    """Seed-format rows for "What is <problem>?" with the exact integer value as ground truth.

    extra_info keeps the operands and operators, so tools (e.g. the demo's SFT data) need not
    parse the question back.
    """
    rows = []
    for index, problem in enumerate(problems):
        question = f"What is {problem_text(problem)}?"
        content = f"{question} {instruction}" if instruction else question
        extra = {"question": question, "operands": list(problem[0]), "operators": list(problem[1])}
        rows.append(
            make_row(content, str(evaluate(problem)), ARITHMETIC_SOURCE, split, index, **extra)
        )
    return rows


def prep_arithmetic(
    out: Path,
    train: int = 2000,
    test: int = 200,
    seed: int = 0,
    max_operand: int = 99,
    ops: str = "+",
    terms: int = 2,
    instruction: str = ARITHMETIC_INSTRUCTION,
) -> dict[str, Path]:
    """Write a synthetic arithmetic task; train and test problems never overlap."""
    problems = arithmetic_problems(train + test, seed, max_operand, ops, terms)
    splits = {"test": problems[:test], "train": problems[test:]}
    return {
        split: write_rows(arithmetic_rows(items, split, instruction), out / f"{split}.parquet")
        for split, items in splits.items()
    }


# ------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distill_trainer.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    math = commands.add_parser("prep-math", help="MATH-lighteval (downloads from the HF Hub)")
    math.add_argument("--out", type=Path, required=True)
    arith = commands.add_parser("prep-arithmetic", help="synthetic arithmetic, offline")
    arith.add_argument("--out", type=Path, required=True)
    arith.add_argument("--train", type=int, default=2000, help="training prompts")
    arith.add_argument("--test", type=int, default=200, help="validation prompts")
    arith.add_argument("--seed", type=int, default=0)
    arith.add_argument("--max-operand", type=int, default=99)
    arith.add_argument("--ops", default="+", help="operators to draw from, e.g. '+-*'")
    arith.add_argument("--terms", type=int, default=2, help="operands per problem")
    arith.add_argument("--instruction", default=ARITHMETIC_INSTRUCTION)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "prep-math":
        paths = prep_math(args.out)
    else:
        paths = prep_arithmetic(
            args.out,
            train=args.train,
            test=args.test,
            seed=args.seed,
            max_operand=args.max_operand,
            ops=args.ops,
            terms=args.terms,
            instruction=args.instruction,
        )
    for split, path in paths.items():
        log.info("wrote %s (%s)", path, split)


if __name__ == "__main__":
    main()
