"""The grading library against the table, plus properties of the fast path and of extraction."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from distill_grader.grading import (
    _verify,
    compare_answers,
    fast_match,
    grade_answer,
    grade_item,
    normalise_answer,
    prepare_answer,
)
from distill_grader.schema import Reason, Verdict


def test_grading_table(grading_case: Any) -> None:
    verdict = grade_answer(grading_case.response, grading_case.ground_truth)
    assert verdict.reason == grading_case.reason
    assert verdict.score == (1.0 if grading_case.reason == "correct" else 0.0)


def test_table_is_large_and_covers_every_library_reason(grading_table: list[Any]) -> None:
    counts = Counter(case.reason for case in grading_table)
    assert len(grading_table) >= 60
    assert set(counts) == {"correct", "wrong", "no_answer", "parse_error"}
    assert counts["wrong"] >= 15  # true negatives, not only equivalences


def test_extracted_answer_is_reported() -> None:
    verdict = grade_answer(r"so $x = \boxed{\dfrac{1}{2}}$.", "0.5")
    assert verdict == (1.0, Reason.CORRECT, r"\dfrac{1}{2}")
    assert grade_answer("no idea", "1").extracted is None


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
def test_integer_fast_path_agrees_with_math_verify(a: int, b: int) -> None:
    assert fast_match(str(a), str(b)) == (a == b)
    assert _verify(str(a), str(b)) == (Reason.CORRECT if a == b else Reason.WRONG)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**30))
def test_thousands_separators_are_the_same_integer(n: int) -> None:
    assert compare_answers(f"{n:,}", str(n)) == Reason.CORRECT
    assert compare_answers(f"{n:,}", str(n + 1)) == Reason.WRONG


def test_integers_beyond_int_conversion_limit_compare_as_digits() -> None:
    huge = "9" * 5000  # int() refuses more than 4,300 digits
    assert fast_match(huge, huge + "") is True
    assert fast_match(huge, "0" + huge) is True
    assert fast_match(huge, huge[:-1] + "8") is False


def test_spelling_normalisation_is_decisive_without_sympy() -> None:
    assert fast_match(r"$\left( 1,\! 2 \right)$.", "(1,2)") is True
    assert fast_match(r"\dfrac{1}{2}", r"\frac{1}{2}") is True
    assert fast_match(r"\frac{1}{2}", "0.5") is None  # needs math-verify


def test_space_between_digits_is_never_dropped() -> None:
    assert normalise_answer("2 3") == "2 3"
    assert normalise_answer(r"2\ 3") == "2 3"
    assert normalise_answer(" x =  1 ,  y = 2 ") == "x=1,y=2"
    assert normalise_answer(r"1\,000") == "1000"  # a thin space is a thousands separator
    assert fast_match("2 3", "23") is not True
    assert compare_answers("2 3", "23") == Reason.WRONG


_INTS = st.integers(-50, 50)
_NUMERIC = st.one_of(
    _INTS.map(str),
    st.tuples(_INTS, _INTS).map(lambda t: f"({t[0]}, {t[1]})"),
    st.tuples(_INTS, _INTS).map(lambda t: f"\\left[{t[0]},{t[1]}\\right)"),
    st.tuples(_INTS, _INTS, _INTS).map(lambda t: f"({t[0]},{t[1]},{t[2]})"),
)


@settings(max_examples=100, deadline=None)
@given(_NUMERIC, _NUMERIC)
def test_fast_path_decisions_agree_with_math_verify(answer: str, truth: str) -> None:
    fast = fast_match(answer, truth)
    if fast is not None:
        assert _verify(answer, truth) == (Reason.CORRECT if fast else Reason.WRONG)


def test_tuples_of_integers_are_decided_without_sympy() -> None:
    assert fast_match(r"\left(3, -1\right)", "(3,-1)") is True
    assert fast_match("(1, 3)", "(1, 2)") is False
    assert fast_match("(1, 2, 3)", "(1, 2, 4)") is False
    assert fast_match("[0, 0)", "[0, -1)") is None  # both empty: math-verify decides
    assert fast_match("[1, 2)", "[1, 3)") is False
    assert fast_match("74", "(73, 7)") is False
    assert fast_match("(1, 2)", "[1, 2)") is None  # different brackets: math-verify decides
    assert fast_match("(1,000)", "(1,0)") is None  # maybe a thousands separator


def test_a_comma_and_a_space_separate_items_not_thousands() -> None:
    assert compare_answers("32, 349", "32349") == Reason.WRONG
    assert compare_answers("10100", "10, 100") == Reason.WRONG
    assert compare_answers("1234", "1, 234") == Reason.WRONG
    assert compare_answers("349, 32", "32, 349") == Reason.CORRECT
    assert compare_answers("1,234", "1234") == Reason.CORRECT


def test_thousands_separators_of_every_spelling() -> None:
    for spelling in ["1 000 000", "1,000,000", r"1{,}000{,}000", r"1\,000\,000", r"1,\!000,\!000"]:
        assert compare_answers(spelling, "1000000") == Reason.CORRECT, spelling
    assert prepare_answer("1,000.50") == "1000.50"
    assert prepare_answer("0,111") == "0,111"  # no group starts with 0: not a separator
    assert prepare_answer("1,000,00") == "1,000,00"  # a short last group: not a separator
    assert prepare_answer("[402,475)") == "[402,475)"  # in brackets a bare comma separates
    assert prepare_answer(r"(1\,000, 2)") == "(1000, 2)"
    assert compare_answers("[402,475)", "[402, 475)") == Reason.CORRECT
    assert compare_answers("2 3", "23") == Reason.WRONG


def test_scale_words_are_powers_of_ten() -> None:
    assert prepare_answer(r"2 \text{ million}") == r"2\times10^{6}"
    assert compare_answers(r"2 \text{ million}", "2000000") == Reason.CORRECT
    assert compare_answers("4.5 billion", "4500000000") == Reason.CORRECT
    assert compare_answers(r"2 \text{ million}", "2000") == Reason.WRONG


def test_inequalities_on_one_variable_are_intervals() -> None:
    assert prepare_answer(r"-2\le x\le 7") == "[-2, 7]"
    assert prepare_answer(r"5 > x \ge -1") == "[-1, 5)"
    assert prepare_answer(r"x > 3") == r"(3, \infty)"
    assert prepare_answer(r"3 \leq y") == r"[3, \infty)"
    assert prepare_answer("0<f(x)<1") == "(0, 1)"
    assert prepare_answer("x<y<z") == "x<y<z"  # bounds are variables: no interval
    assert prepare_answer(r"x < 2 \le 3") == r"x < 2 \le 3"  # the middle is not a variable
    assert prepare_answer(r"1 < x > 0") == r"1 < x > 0"  # mixed directions
    assert compare_answers(r"-2\le x\le 7", r"x\in[-2,7]") == Reason.CORRECT
    assert compare_answers(r"-2< x\le 7", r"x\in[-2,7]") == Reason.WRONG


def test_percent_sign_optional_against_the_same_number() -> None:
    assert compare_answers("12.5", r"12.5\%") == Reason.CORRECT
    assert compare_answers(r"12.5\%", "12.5") == Reason.CORRECT
    assert compare_answers(r"1.25\%", r"12.5\%") == Reason.WRONG


def test_data_source_picks_the_grading_rule(monkeypatch) -> None:
    from distill_grader import grading

    def exact(response: str, ground_truth: str) -> Verdict:
        same = response.strip() == ground_truth
        return Verdict(float(same), Reason.CORRECT if same else Reason.WRONG, response.strip())

    monkeypatch.setitem(grading.GRADING_RULES, "exact-text", exact)
    assert grade_item(r"\boxed{0.5}", r"\frac12", "exact-text").reason == Reason.WRONG
    assert grade_item(r"\boxed{0.5}", r"\frac12", "math").reason == Reason.CORRECT
    assert grade_item(r"\boxed{0.5}", r"\frac12", "gsm8k").reason == Reason.CORRECT  # default
