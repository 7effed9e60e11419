"""Final-answer extraction: balanced boxes, fallbacks, and hostile nesting."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from distill_grader.extract import brace_depth, extract_answer, last_boxed, last_stated_answer


def test_last_balanced_box_wins() -> None:
    assert last_boxed(r"\boxed{1} then \boxed{\frac{2}{3}}") == r"\frac{2}{3}"
    assert last_boxed(r"\boxed{1} then \fbox{2}") == "2"
    assert last_boxed(r"\boxed{1} and a cut-off \boxed{\frac{2}{") == "1"
    assert last_boxed(r"\boxed{} after \boxed{3}") == "3"
    assert last_boxed(r"\boxed {4}") == "4"
    assert last_boxed(r"\boxed 5 apples") == "5"
    assert last_boxed(r"\boxedfoo{6}") is None


def test_bare_box_argument_with_or_without_a_space() -> None:
    assert last_boxed(r"\boxed5") == "5"  # TeX's one-token argument, no space needed
    assert last_boxed(r"so \boxed5.") == "5"
    assert last_boxed(r"\boxed 12, which checks out") == "12"
    assert last_boxed(r"\boxed\pi") == r"\pi"
    assert last_boxed(r"\boxed -3") == "-3"
    assert last_boxed(r"\boxed 2\sqrt{3} here") == r"2\sqrt{3}"
    assert last_boxed(r"we use \boxed: nothing boxed") is None
    assert last_boxed(r"\boxed}") is None


def test_escaped_braces_do_not_count() -> None:
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\boxed{\left\{ x \right.}") == r"\left\{ x \right."
    assert last_boxed(r"\boxed{a \\{b}}") == r"a \\{b}"  # \\ is a line break; { opens a group


def test_ten_thousand_nested_boxes_and_braces() -> None:
    nested_boxes = r"\boxed{" * 10_000 + "7" + "}" * 10_000
    assert last_boxed(nested_boxes) == "7"
    nested_braces = r"\boxed{" + "{" * 10_000 + "7" + "}" * 10_000 + "}"
    assert last_boxed(nested_braces) == "{" * 10_000 + "7" + "}" * 10_000
    assert brace_depth(nested_braces) == 10_001
    assert last_boxed(r"\boxed{" + "{" * 10_000) is None  # never closed


def test_stated_answer_fallbacks() -> None:
    assert last_stated_answer("The answer is $\\frac{1}{2}$ of the pie.") == r"\frac{1}{2}"
    assert last_stated_answer("so the final answer is: 12.") == "12"
    assert last_stated_answer("The answer is \\(x+1\\), clearly") == "x+1"
    assert last_stated_answer("Answer: 3\nAnswer: 4") == "4"
    assert last_stated_answer("#### 71 #### 72") == "72"
    assert last_stated_answer("48 + 24 = 72\n#### 72") == "72"
    assert last_stated_answer("#### Step 1\nwork") is None  # a markdown heading, not an answer
    assert last_stated_answer("no conclusion here") is None


def test_the_last_stated_answer_on_a_line_wins() -> None:
    assert last_stated_answer("The answer is 5. But wait, the answer is 6") == "6"
    assert last_stated_answer("Answer: 3, no wait, Answer: 4.") == "4"
    assert (
        last_stated_answer("The answer is 7? No, the answer is $\\frac{1}{2}$.") == r"\frac{1}{2}"
    )
    assert last_stated_answer("The answer is $x$ and Answer: $y$\nthen prose") == "y"
    assert last_stated_answer("The answer is 5. Then the answer is.") == "5"  # empty: earlier one
    assert last_stated_answer("The answer is 5.\nIs that the answer? yes") == "5"


def test_many_anchors_on_one_line_stay_linear() -> None:
    text = "the answer is. " * 3000  # every anchor empty: each is read only to the next one
    started = time.perf_counter()
    assert last_stated_answer(text) is None
    assert time.perf_counter() - started < 1.0


def test_box_takes_priority_over_stated_answer() -> None:
    assert extract_answer(r"\boxed{1}. The answer is 2.") == "1"
    assert extract_answer("The answer is 2.") == "2"
    assert extract_answer("nothing") is None


@given(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=40))
def test_box_content_round_trips(content: str) -> None:
    expected = content.strip() or None
    assert last_boxed(f"prefix \\boxed{{{content}}} suffix") == expected


def test_boxes_joined_only_by_connectives_make_one_answer() -> None:
    assert last_boxed(r"x = \boxed{2} or x = \boxed{3}") == "2, 3"
    assert last_boxed(r"$x_1 = \boxed{2}$, $x_2 = \boxed{3}$") == "2, 3"
    assert last_boxed(r"$\boxed{1}$, $\boxed{2}$, and $\boxed{3}$") == "1, 2, 3"
    assert last_boxed(r"roots \boxed{-1} \text{ and } \boxed{5}") == "-1, 5"
    assert last_boxed(r"first \boxed{1}, then on reflection \boxed{2}") == "2"  # words between
    assert last_boxed(r"\boxed{2}. So the answer is \boxed{3}") == "3"
    assert last_boxed(r"\boxed{\boxed{5}}") == "5"  # nested, not side by side
    assert last_boxed(r"\boxed 2, \boxed 3") == "2, 3"


def test_a_stated_phrase_gives_what_follows_its_last_is() -> None:
    assert last_stated_answer("Final Answer: The largest $n$ is 34.") == "34"
    assert last_stated_answer("The answer is: the total number of pens is 12.") == "12"
    assert last_stated_answer("Final Answer: The largest $n$ is 34, since 35 fails.") == "34"
    assert last_stated_answer("The answer is 5 and the remainder is 2.") == "5"  # not a phrase
    assert last_stated_answer("The answer is $x$ where $x$ is 3") == "x"  # math first: kept
    assert last_stated_answer(r"Answer \[ 9 \]") == "9"
    assert last_stated_answer("The answer is 2 million dollars.") == "2 million"
    assert last_stated_answer("Answers vary; nothing here") is None
