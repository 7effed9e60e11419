"""The prompt parquet format: MATH and arithmetic prep, reading back, errors, and S3 via moto."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill_trainer import data

MATH_EXAMPLES = [
    {
        "problem": "What is $1+1$?",
        "solution": "We add: $1+1=\\boxed{2}$.",
        "level": "Level 1",
        "type": "Algebra",
    },
    {
        "problem": "Simplify $\\frac{2}{4}$.",
        "solution": "First $\\boxed{3}$ is wrong; the answer is $\\boxed{\\frac{1}{2}}$.",
        "level": "Level 2",
        "type": "Prealgebra",
    },
    {"problem": "No answer here.", "solution": "It is 5.", "level": "Level 1", "type": "Algebra"},
]


def test_math_rows_follow_the_seed_columns() -> None:
    rows = data.math_rows(MATH_EXAMPLES, "train")
    assert len(rows) == 2  # the example without \boxed{} is dropped
    first = rows[0]
    assert first["data_source"] == "DigitalLearningGmbH/MATH-lighteval"
    assert first["ability"] == "math"
    assert first["prompt"] == [
        {
            "role": "user",
            "content": "What is $1+1$? Let's think step by step and output the final answer "
            "within \\boxed{}.",
        }
    ]
    assert first["reward_model"] == {"style": "rule", "ground_truth": "2"}
    assert first["extra_info"] == {
        "split": "train",
        "index": 0,
        "level": "Level 1",
        "type": "Algebra",
    }
    assert rows[1]["reward_model"]["ground_truth"] == "\\frac{1}{2}"


def test_math_rows_round_trip_through_parquet(tmp_path: Path) -> None:
    path = data.write_rows(data.math_rows(MATH_EXAMPLES, "test"), tmp_path / "test.parquet")
    records = data.read_dataset(str(path))
    assert [r.ground_truth for r in records] == ["2", "\\frac{1}{2}"]
    assert records[1].messages[0]["role"] == "user"
    assert records[1].extra_info["split"] == "test"


def test_arithmetic_generator_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    first = data.prep_arithmetic(tmp_path / "a", train=300, test=50, seed=7, max_operand=30)
    again = data.prep_arithmetic(tmp_path / "b", train=300, test=50, seed=7, max_operand=30)
    other = data.prep_arithmetic(tmp_path / "c", train=300, test=50, seed=8, max_operand=30)
    train, test = (data.read_dataset(str(first[s])) for s in ("train", "test"))
    assert (len(train), len(test)) == (300, 50)
    assert train == data.read_dataset(str(again["train"]))
    assert train != data.read_dataset(str(other["train"]))
    prompts = {r.messages[0]["content"] for r in train}
    assert prompts.isdisjoint(r.messages[0]["content"] for r in test)
    assert len(prompts) == 300


def test_arithmetic_rows_have_exact_answers() -> None:
    problems = [((23, 48), ("+",)), ((5, 9), ("-",)), ((2, 3, 4), ("+", "*")), ((8, 2, 3), "-*")]
    rows = data.arithmetic_rows(problems, "train")
    assert [r["prompt"][0]["content"] for r in rows] == [
        "What is 23 + 48? Answer in \\boxed{}.",
        "What is 5 - 9? Answer in \\boxed{}.",
        "What is 2 + 3 * 4? Answer in \\boxed{}.",
        "What is 8 - 2 * 3? Answer in \\boxed{}.",
    ]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["71", "-4", "14", "2"]
    assert rows[0]["data_source"] == "synthetic/arithmetic"
    assert rows[2]["extra_info"] == {
        "split": "train",
        "index": 2,
        "question": "What is 2 + 3 * 4?",
        "operands": [2, 3, 4],
        "operators": ["+", "*"],
    }


def test_evaluate_agrees_with_python_precedence() -> None:
    for problem in data.arithmetic_problems(300, seed=2, max_operand=12, ops="+-*", terms=4):
        assert data.evaluate(problem) == eval(data.problem_text(problem))


def test_arithmetic_operands_stay_in_range() -> None:
    problems = data.arithmetic_problems(200, seed=1, max_operand=9, ops="+-")
    assert len(set(problems)) == 200 == (9 + 1) ** 2 * 2
    assert all(
        len(operands) == 2 and all(0 <= x <= 9 for x in operands) and operators[0] in "+-"
        for operands, operators in problems
    )
    wide = data.arithmetic_problems(50, seed=1, max_operand=9, terms=5)
    assert {len(operands) for operands, _ in wide} == {5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 101, "seed": 0, "max_operand": 9}, "allow only 100"),
        ({"count": 1, "seed": 0, "max_operand": 9, "ops": "/"}, "ops must be made of"),
        ({"count": 1, "seed": 0, "max_operand": 9, "terms": 1}, "terms >= 2"),
    ],
)
def test_arithmetic_rejects_impossible_requests(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data.arithmetic_problems(**kwargs)


def test_cli_writes_both_splits(tmp_path: Path) -> None:
    data.main(["prep-arithmetic", "--out", str(tmp_path), "--train", "20", "--test", "5"])
    assert len(data.read_dataset(str(tmp_path / "train.parquet"))) == 20
    assert len(data.read_dataset(str(tmp_path / "test.parquet"))) == 5


def test_cli_passes_terms_ops_and_instruction(tmp_path: Path) -> None:
    args = ["--train", "6", "--test", "2", "--terms", "3", "--ops", "-", "--instruction", ""]
    data.main(["prep-arithmetic", "--out", str(tmp_path), *args])
    (record, *_) = data.read_dataset(str(tmp_path / "train.parquet"))
    question = record.messages[0]["content"]
    assert question.startswith("What is ") and question.endswith("?")
    assert question.count(" - ") == 2
    assert record.extra_info["operators"] == ["-", "-"]
    a, b, c = record.extra_info["operands"]
    assert record.ground_truth == str(a - b - c)


def _good_row() -> dict:
    return data.make_row("What is 1 + 1?", "2", "unit", "train", 0)


@pytest.mark.parametrize("column", ["prompt", "reward_model", "data_source"])
def test_missing_column_is_named(tmp_path: Path, column: str) -> None:
    row = _good_row()
    del row[column]
    path = data.write_rows([row], tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=f"lacks column\\(s\\) {column}"):
        data.read_dataset(str(path))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("reward_model", {"style": "rule", "ground_truth": None}, "'reward_model' lacks"),
        ("prompt", [], "'prompt' must be a non-empty list"),
        ("data_source", "", "'data_source' must be a non-empty string"),
    ],
)
def test_bad_values_are_named_with_their_row(
    tmp_path: Path, column: str, value: object, message: str
) -> None:
    rows = [_good_row(), {**_good_row(), column: value}]
    path = data.write_rows(rows, tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=f"row 1: column {message}"):
        data.read_dataset(str(path))


def test_a_list_of_answers_as_ground_truth_is_refused(tmp_path: Path) -> None:
    row = {**_good_row(), "reward_model": {"style": "rule", "ground_truth": ["5", "five"]}}
    path = data.write_rows([row], tmp_path / "lists.parquet")
    with pytest.raises(ValueError, match="row 0: column 'reward_model' has a ground_truth of type"):
        data.read_dataset(str(path))


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet"):
        data.read_dataset(str(tmp_path / "nope.parquet"))


def test_extra_columns_are_ignored(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([{**_good_row(), "difficulty": 3}])
    pq.write_table(table, tmp_path / "extra.parquet")
    (record,) = data.read_dataset(str(tmp_path / "extra.parquet"))
    assert record.ground_truth == "2"
    assert record.extra_info == {"split": "train", "index": 0}
