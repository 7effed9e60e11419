"""Grade one response against its ground truth: extract, fast path, then math-verify.

``grade_item`` is what the pool's worker processes run for every item: the rule of the item's
``data_source`` (``grade_answer``, math, for every source today). It never raises: any
failure becomes a reason. math-verify's own timeouts use ``signal.alarm``, which only works in a
process's main thread, so they are switched off here (``parsing_timeout=None``,
``timeout_seconds=None``); the pool enforces the per-item deadline by killing the worker instead,
which also stops work stuck in C code (a huge integer power) that no signal could interrupt.

Fast path, before any sympy work: equal strings after normalisation are correct, and two plain
integers are compared directly. Ground truths repeat across the samples of one prompt and models
repeat answers, so parsed ground truths and short verdicts are cached per worker.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from distill_grader.extract import brace_depth, extract_answer, strip_math_delimiters
from distill_grader.schema import DEFAULT_SOURCE, Reason, Verdict

# math-verify warns once that its timeouts are off; that is deliberate here (see above).
logging.getLogger("math_verify").setLevel(logging.ERROR)

# The answer is fed to math-verify as \boxed{...}, so its LaTeX extraction reads exactly it.
_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_CACHE_MAX_CHARS = 512  # longer strings are graded uncached: the caches must stay small
# No real answer nests braces this deep; latex2sympy would spend minutes on one that does.
_MAX_BRACE_DEPTH = 64
# Thin spaces and \left/\right only change the look ("1\\,000" is 1000, a thousands separator).
_SPACING_RE = re.compile(r"\\[,;:!]|\\(?:left|right)(?![A-Za-z])")
_CONTROL_SPACE_RE = re.compile(r"(?<!\\)\\ ")  # "\ ", but not the end of a "\\" line break
# Other space goes too, except between two digits: "2 3" is not 23 (math-verify agrees).
_DIGIT_GAP_RE = re.compile(r"(?<=[\d.])\s+(?=[\d.])")
_SPACE_RE = re.compile(r"\s+")
_INT_RE = re.compile(r"[+-]?\d+")
# Thousands separators: "1,234", "1{,}234", "1\\,234", "1\\ 234", "1~234" and "1 234" (as in
# Math-Verify's tests). A comma followed by a space separates list items: "32, 349" is two
# numbers; in brackets a bare comma does too: "[402,475)" is an interval, not 402475.
_SEPARATORS = r",\\!|\{,\}|\\,|\\ |~| "  # ",\!" is how MATH writes them
_THOUSANDS_PATTERN = r"(?<![\d.,])([1-9]\d{{0,2}})((?:(?:{})\d{{3}})+)(?!\d|,\d)"
_THOUSANDS_RE = re.compile(_THOUSANDS_PATTERN.format("," + "|" + _SEPARATORS))
_BRACKETED_THOUSANDS_RE = re.compile(_THOUSANDS_PATTERN.format(_SEPARATORS))
_BRACKET_RE = re.compile(r"[()\[\]]|\\\{")
_THOUSANDS_SEPARATOR_RE = re.compile(r"\\!|\{,\}|\\,|\\ |[,~ ]")
_SCALE_WORDS = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
_SCALE_RE = re.compile(
    r"(\d(?:\.\d+)?)\s*(?:\\(?:text|textnormal|mathrm|mbox)\s*\{\s*(thousand|million|billion|trillion)"
    r"\s*\}|(thousand|million|billion|trillion)\b)"
)
# -2 \le x \le 7, the interval [-2, 7]; "\le" but not "\left".
_RELATION_RE = re.compile(r"\\(?:le|leq|ge|geq|lt|gt)(?![A-Za-z])|<=|>=|[<>≤≥]")
_LESS = {"\\le": "]", "\\leq": "]", "<=": "]", "≤": "]", "\\lt": ")", "<": ")"}
_GREATER = {"\\ge": "]", "\\geq": "]", ">=": "]", "≥": "]", "\\gt": ")", ">": ")"}
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_LETTER_RE = re.compile(r"[A-Za-z]")
# x, x_1, f(x): what an inequality may bound ("0 < f(x) < 1" is the interval (0, 1)).
_VARIABLE_RE = re.compile(r"\s*[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*")
_PERCENT_RE = re.compile(r"\\?%$")
_INT_LIST_RE = re.compile(r"([(\[])([+-]?\d+(?:,[+-]?\d+)+)([)\]])")
_LEADING_ZERO_RE = re.compile(r"[+-]?0\d+")


def grade_item(response: str, ground_truth: str, data_source: str = DEFAULT_SOURCE) -> Verdict:
    """Grade with the rule of the item's ``data_source``: every source is math today (see
    ``GRADING_RULES``); a future source with other answers (code, proofs) adds its own rule."""
    return GRADING_RULES.get(data_source, grade_answer)(response, ground_truth)


def grade_answer(response: str, ground_truth: str) -> Verdict:
    """Score ``response`` against ``ground_truth`` (1.0 only for reason ``correct``)."""
    try:
        extracted = extract_answer(response)
    except Exception:  # a bug here must cost one item, not the worker
        logging.getLogger(__name__).exception("answer extraction failed")
        return Verdict(0.0, Reason.PARSE_ERROR, None)
    if extracted is None:
        return Verdict(0.0, Reason.NO_ANSWER, None)
    reason = compare_answers(extracted, ground_truth)
    return Verdict(1.0 if reason is Reason.CORRECT else 0.0, reason, extracted)


def compare_answers(extracted: str, ground_truth: str) -> Reason:
    """``correct``, ``wrong`` or ``parse_error`` for an extracted answer."""
    fast = fast_match(extracted, ground_truth)
    if fast is not None:
        return Reason.CORRECT if fast else Reason.WRONG
    if max(brace_depth(extracted), brace_depth(ground_truth)) > _MAX_BRACE_DEPTH:
        return Reason.PARSE_ERROR
    if len(extracted) + len(ground_truth) <= _CACHE_MAX_CHARS:
        return _verify_cached(extracted, ground_truth)
    return _verify(extracted, ground_truth)


def prepare_answer(answer: str) -> str:
    """What is compared (by the fast path and by math-verify): math delimiters dropped,
    thousands separators removed, "2 million" as ``2\\times10^{6}``, and a chained inequality on
    one variable (``-2\\le x\\le 7``) as its interval (``[-2, 7]``)."""
    answer = strip_math_delimiters(answer)
    thousands = _BRACKETED_THOUSANDS_RE if _BRACKET_RE.search(answer) else _THOUSANDS_RE
    answer = thousands.sub(lambda m: m[1] + _THOUSANDS_SEPARATOR_RE.sub("", m[2]), answer)
    answer = _SCALE_RE.sub(lambda m: rf"{m[1]}\times10^{{{_SCALE_WORDS[m[2] or m[3]]}}}", answer)
    return _inequality_as_interval(answer) or answer


def _inequality_as_interval(answer: str) -> str | None:
    """``a < x \\le b`` (or ``b \\ge x > a``) as ``(a, b]``; ``x > a`` as ``(a, \\infty)``."""
    relations = list(_RELATION_RE.finditer(answer))
    if len(relations) == 1:
        op = relations[0].group()
        left, right = answer[: relations[0].start()], answer[relations[0].end() :]
        below, above = ("-\\infty", "\\infty") if op in _LESS else ("\\infty", "-\\infty")
        if _VARIABLE_RE.fullmatch(left):  # x < b is -oo < x < b
            return _interval([below, right.strip()], [op, op])
        if _VARIABLE_RE.fullmatch(right):  # a < x is a < x < oo
            return _interval([left.strip(), above], [op, op])
        return None
    if len(relations) != 2:
        return None
    first, second = relations
    if not _VARIABLE_RE.fullmatch(answer[first.end() : second.start()]):
        return None
    bounds = [answer[: first.start()].strip(), answer[second.end() :].strip()]
    return _interval(bounds, [first.group(), second.group()])


def _flip(relation: str) -> str:
    """The relation that reads the same from the other side: "<" for ">", "\\ge" for "\\le"."""
    pairs = {"<": ">", "<=": ">=", "≤": "≥", "\\le": "\\ge", "\\leq": "\\geq", "\\lt": "\\gt"}
    pairs |= {v: k for k, v in pairs.items()}
    return pairs[relation]


def _interval(bounds: list[str], relations: list[str]) -> str | None:
    """The interval of ``bounds[0] rel0 x rel1 bounds[1]`` when both relations point one way."""
    if not all(bound and not _LETTER_RE.search(_COMMAND_RE.sub("", bound)) for bound in bounds):
        return None  # "x < y < z" relates variables: no interval of numbers
    if all(op in _GREATER for op in relations):
        bounds, relations = bounds[::-1], [_flip(op) for op in relations[::-1]]
    elif not all(op in _LESS for op in relations):
        return None
    left = "(" if _LESS[relations[0]] == ")" or bounds[0] == "-\\infty" else "["
    right = ")" if _LESS[relations[1]] == ")" or bounds[1] == "\\infty" else "]"
    return f"{left}{bounds[0]}, {bounds[1]}{right}"


def normalise_answer(answer: str) -> str:
    """Spelling-only normalisation of a prepared answer: spacing, ``\\left``/``\\right``,
    ``\\dfrac``.

    Space between two digits stays (as one space), so that it cannot join ``2 3`` into ``23``.
    """
    answer = prepare_answer(answer)
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = _SPACING_RE.sub("", answer.replace("{,}", ","))
    answer = _CONTROL_SPACE_RE.sub(" ", answer)
    return " ".join(_SPACE_RE.sub("", part) for part in _DIGIT_GAP_RE.split(answer))


def fast_match(extracted: str, ground_truth: str) -> bool | None:
    """True/False when decidable without sympy, else None.

    Decided here: the same spelling; two integers; two tuples or intervals of integers with the
    same brackets and length (elementwise); an integer against such a tuple (never equal).
    Parsing a tuple with latex2sympy costs ~30 ms, a hundred times the rest of an item.
    """
    answer, truth = normalise_answer(extracted), normalise_answer(ground_truth)
    if answer and answer == truth:
        return True
    # MATH writes percentages both ways: "12.5" answers "12.5\%" (math-verify's own percent
    # reading, 12.5% = 0.125, still applies on the way to sympy).
    if answer and _PERCENT_RE.sub("", answer) == _PERCENT_RE.sub("", truth) != "":
        return True
    answer_int, truth_int = _canonical_int(answer), _canonical_int(truth)
    if answer_int is not None and truth_int is not None:
        return answer_int == truth_int
    answer_list, truth_list = _int_list(answer), _int_list(truth)
    if answer_list is not None and truth_list is not None:
        return _decide_lists(answer_list, truth_list)
    number_vs_list = (answer_int is not None and truth_list is not None) or (
        truth_int is not None and answer_list is not None
    )
    return False if number_vs_list else None


def _int_list(text: str) -> tuple[str, tuple[int, ...], str] | None:
    """(opening bracket, integers, closing bracket) of "(1,-2)" or "[3,4)"."""
    match = _INT_LIST_RE.fullmatch(text)
    if match is None:
        return None
    elements = match[2].split(",")
    if any(len(e) > 100 or _LEADING_ZERO_RE.fullmatch(e) for e in elements):
        return None  # huge, or "(1,000)", which may be a thousands separator
    return match[1], tuple(int(e) for e in elements), match[3]


def _decide_lists(answer: tuple, truth: tuple) -> bool | None:
    if answer[::2] != truth[::2] or len(answer[1]) != len(truth[1]):
        return None  # brackets or lengths differ: tuple vs interval semantics, math-verify decides
    if answer[1] == truth[1]:
        return True
    if len(answer[1]) == 2 and not (answer[1][0] < answer[1][1] and truth[1][0] < truth[1][1]):
        return None  # a degenerate interval such as [0,0) is empty: all of them are equal
    return False


def _canonical_int(text: str) -> str | None:
    # Compared as digit strings: int() refuses more than 4,300 digits.
    if not _INT_RE.fullmatch(text):
        return None
    sign = "-" if text.startswith("-") else ""
    digits = text.lstrip("+-").lstrip("0")
    return sign + digits if digits else "0"


@lru_cache(maxsize=4096)
def _verify_cached(extracted: str, ground_truth: str) -> Reason:
    return _verify(extracted, ground_truth)


def _verify(extracted: str, ground_truth: str) -> Reason:
    gold = _parse_cached(ground_truth) if len(ground_truth) <= _CACHE_MAX_CHARS else None
    if gold is None:
        gold = _parse(ground_truth)
    predicted = _parse(extracted)
    if not gold or not predicted:
        return Reason.PARSE_ERROR
    try:
        same = verify(list(gold), list(predicted), timeout_seconds=None)
    except Exception:  # math-verify swallows most errors itself; anything left is a parse failure
        return Reason.PARSE_ERROR
    if same:
        return Reason.CORRECT
    # math-verify falls back to the raw string when sympy cannot read an answer: such an
    # answer (or ground truth) is not math we understood, which is not the same as wrong.
    understood = all(any(not isinstance(x, str) for x in side) for side in (gold, predicted))
    return Reason.WRONG if understood else Reason.PARSE_ERROR


@lru_cache(maxsize=1024)
def _parse_cached(answer: str) -> tuple:
    return _parse(answer)


def _parse(answer: str) -> tuple:
    boxed = "\\boxed{" + prepare_answer(answer) + "}"
    try:
        return tuple(parse(boxed, extraction_config=_EXTRACTION, parsing_timeout=None))
    except Exception:
        return ()


# data_source -> grading rule; sources not listed here (every math set) use grade_answer.
GRADING_RULES: dict[str, Callable[[str, str], Verdict]] = {}


def warm_up() -> None:
    """Build math-verify's parsers and sympy's first-use state (numeric evaluation, polynomial
    expansion, tuples) once, so that a fresh worker's first such item is not slow (~0.5 s)."""
    grade_answer("so \\boxed{\\dfrac{1}{2}}", "0.5")
    grade_answer("The answer is $x^2+1$.", "1+x^2")
    grade_answer("\\boxed{\\pi}", "3.14")
    grade_answer("\\boxed{y^2+2y+1}", "(y+1)^2")
    grade_answer("\\boxed{(1, \\frac{1}{2})}", "(1, 0.5)")
    grade_answer("\\boxed{\\log_2 8}", "3")
