"""The clients' in-process fast path gives exactly the pool's verdicts, and only trivial items skip
the pool: on every labelled case of eval_cases.py and on responses like the demo student's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from grader.eval_cases import EVAL_CASES

from distill_grader import GradeRequestItem, LocalGrader
from distill_grader.client import TRIVIAL_MAX_CHARS, grade_trivially, with_fast_path
from distill_grader.grading import grade_answer
from distill_grader.schema import GradeResult

# What the demo's tiny student writes: a boxed number, a stray box, or nothing usable.
DEMO_LIKE = [
    (r"\boxed{23}", "23"),
    (r"\boxed{23}", "24"),
    (r"\boxed{023}", "23"),
    (r"\boxed{-7}", "-7"),
    (r"so \boxed{1}2", "12"),
    ("12", "12"),
    (r"\boxed{}", "3"),
    ("", "5"),
    (r"\boxed{(1,2)}", "(1, 2)"),
    (r"\boxed{\frac{1}{2}}", "0.5"),  # needs math-verify: not trivial
]


def _items() -> list[GradeRequestItem]:
    pairs = [(case.response, case.ground_truth) for case in EVAL_CASES] + DEMO_LIKE
    return [
        GradeRequestItem(id=str(i), response=r, ground_truth=g) for i, (r, g) in enumerate(pairs)
    ]


def _key(result: GradeResult) -> tuple:
    return result.id, result.score, result.reason, result.extracted


def test_trivial_verdicts_equal_grade_answer_on_every_labelled_case() -> None:
    items = _items()
    decided = [(item, grade_trivially(item)) for item in items]
    trivial = [(item, result) for item, result in decided if result is not None]
    # Most labelled cases need sympy; the integer and same-spelling ones do not.
    assert 20 <= len(trivial) < len(items)
    for item, result in trivial:
        verdict = grade_answer(item.response, item.ground_truth)  # what a pool worker runs
        assert _key(result) == (item.id, verdict.score, verdict.reason, verdict.extracted)


def test_demo_like_answers_are_decided_without_the_pool() -> None:
    results = [grade_trivially(GradeRequestItem(id="x", response=r, ground_truth=g))
               for r, g in DEMO_LIKE]  # fmt: skip
    assert [None if r is None else (r.score, r.reason) for r in results] == [
        (1.0, "correct"),
        (0.0, "wrong"),
        (1.0, "correct"),
        (1.0, "correct"),
        (0.0, "wrong"),
        (0.0, "no_answer"),  # a bare number is no stated answer
        (0.0, "no_answer"),
        (0.0, "no_answer"),
        (1.0, "correct"),
        None,
    ]


def test_long_responses_and_other_rules_go_to_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    long = GradeRequestItem(
        id="l", response="x" * TRIVIAL_MAX_CHARS + r"\boxed{1}", ground_truth="1"
    )
    assert grade_trivially(long) is None
    from distill_grader import grading

    monkeypatch.setitem(grading.GRADING_RULES, "code", grade_answer)
    coded = GradeRequestItem(id="c", response=r"\boxed{1}", ground_truth="1", data_source="code")
    assert grade_trivially(coded) is None


def test_only_the_undecided_items_reach_the_rest_in_order() -> None:
    items = [
        GradeRequestItem(id=str(i), response=r, ground_truth=g)
        for i, (r, g) in enumerate(DEMO_LIKE)
    ]
    sent: list[list[str]] = []

    def rest(batch: Sequence[GradeRequestItem]) -> list[GradeResult]:
        sent.append([item.id for item in batch])
        return [GradeResult(id=i.id, score=1.0, reason="correct", extracted="½") for i in batch]

    results = with_fast_path(items, rest)
    assert sent == [["9"]]
    assert [r.id for r in results] == [str(i) for i in range(len(DEMO_LIKE))]
    assert results[9].extracted == "½" and results[0].reason == "correct"
    assert with_fast_path(items[:2], rest) and sent == [["9"]]  # nothing undecided: no call


@pytest.fixture(scope="module")
def graders() -> Iterator[tuple[LocalGrader, LocalGrader]]:
    with (
        LocalGrader(workers=1, fast_path=True) as fast,
        LocalGrader(workers=1, fast_path=False) as pool,
    ):
        yield fast, pool


def test_local_grader_with_fast_path_equals_the_pool_alone(
    graders: tuple[LocalGrader, LocalGrader],
) -> None:
    fast, pool = graders
    # The trivial cases and a sample of the others (each of those costs math-verify twice).
    items = [item for item in _items() if grade_trivially(item) is not None] + _items()[::10]
    assert [_key(r) for r in fast.grade(items)] == [_key(r) for r in pool.grade(items)]
