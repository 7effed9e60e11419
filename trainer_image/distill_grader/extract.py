"""Find the final answer in a model response (pure string code; no math-verify, no sympy).

Order: the last ``\\boxed{...}`` / ``\\fbox{...}`` whose braces balance (or a bare
``\\boxed 5`` / ``\\boxed5``), joined with the boxes just before it when only connectives
separate them ("x = \\boxed{2} or x = \\boxed{3}" is "2, 3", as math-verify reads it), else
the last "The answer is X" / "Answer: X" / "#### X", even where several share a line ("The
answer is 5. But wait, the answer is 6" is 6); of a stated sentence, what follows its last "is"
("Final Answer: The largest $n$ is 34." is 34). Brace matching
walks only the brace tokens with an explicit stack, so 10,000 nested braces cost milliseconds and
never touch the recursion limit. Every regex here is linear in the input (no nested quantifiers,
no lazy scans to a far delimiter), and each stated answer is read only up to the next anchor.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# An escaped brace or an escaped backslash is not a group delimiter; in ``\\{`` the brace is.
_BRACE_RE = re.compile(r"\\[\\{}]|[{}]")
_SPACES_RE = re.compile(r"\s*")
# \boxed 5 or \boxed5: TeX takes one token, but a model writing \boxed 12 means 12, so the
# argument runs to the next space; it may not start with closing punctuation ("\boxed: ...").
_BARE_BOX_ARG_RE = re.compile(r"[ \t]*([^\s${}.,;:?][^\s$]*)")
_BARE_TRAILING = ".,;:?"  # "\boxed 5, so" ends a clause, not the answer
# "#### X" only when X starts like a number or formula: "#### Step 2" is a markdown heading.
# "Answer \[ 9 \]": the word then display or inline math also states an answer.
_ANCHOR_RE = re.compile(
    r"\banswer\s+is\b\s*:?|\banswer\s*:|\banswer\s*(?=\$|\\[\[(])|####(?=[ \t]*[-+$\\\d.(])", re.I
)
# Where plain words start after a stated number ("18 (he saves 2)" too); scale words are part of
# the number.
_TRAILING_WORDS_RE = re.compile(
    r"[\s,;]+\(?(?!(?:thousand|million|billion|trillion|percent)\b)[A-Za-z]{2,}\b", re.I
)
_PHRASE_START_RE = re.compile(r"[A-Za-z]{2,}\b")  # "The largest $n$ is 34", not "5 and ... is 2"
# $…$ math; an escaped dollar (`$\$5$`, money in LaTeX) is content, not a delimiter.
_DOLLAR_MATH_RE = re.compile(r"(?<!\\)\$+((?:\\.|[^$\\])+)\$+")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_INLINE_MATH_RE = re.compile(r"(?<!\\)\$+(?:\\.|[^$\\])*\$+|\\\(.*?\\\)")
# "The largest $n$ is 34": the answer follows the sentence's last "is" outside math.
_IS_RE = re.compile(r"\b(?:is|are)\b\s*:?", re.I)
# What may separate boxes of one answer: math delimiters, punctuation, "and" / "or", and the
# variable being named again ("x = \boxed{2} or x = \boxed{3}").
_BOX_JOINER_RE = re.compile(
    r"(?:\s|[$,;]|\\[()\[\]]|\\q?quad\b|\\text\{\s*(?:and|or|,)?\s*\}|\b(?:and|or)\b"
    r"|[A-Za-z](?:_\{?\w+\}?)?\s*=)*"
)
_MAX_JOINED_BOXES = 10
_MAX_SENTENCE_CHARS = 1000


def extract_answer(text: str) -> str | None:
    """Return the final answer in ``text``, stripped of math delimiters, or None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return last_stated_answer(text)


def last_boxed(text: str) -> str | None:
    """Content of the last balanced, non-empty ``\\boxed{...}`` or ``\\fbox{...}``, with the
    boxes right before it that only connectives separate from it, joined by ", "."""
    boxes = [(m.start(), m.end()) for m in _BOX_RE.finditer(text)]
    if not boxes:
        return None
    closing = _matching_braces(text, boxes[0][1])
    for last in range(len(boxes) - 1, -1, -1):
        answer, end = _box_argument(text, boxes[last][1], closing)
        if answer:
            break
    else:
        return None
    answers, start = [answer], boxes[last][0]
    for earlier in range(last - 1, max(last - _MAX_JOINED_BOXES, 0) - 1, -1):
        previous, end = _box_argument(text, boxes[earlier][1], closing)
        if not previous or end > start or not _BOX_JOINER_RE.fullmatch(text, end, start):
            break
        answers.append(previous)
        start = boxes[earlier][0]
    return ", ".join(reversed(answers))


def _box_argument(text: str, start: int, closing: dict[int, int]) -> tuple[str | None, int]:
    """(argument of the box whose name ends at ``start``, where the argument ends)."""
    brace = _SPACES_RE.match(text, start).end()
    if brace < len(text) and text[brace] == "{":
        close = closing.get(brace)
        return (None, start) if close is None else (text[brace + 1 : close].strip(), close + 1)
    bare = _BARE_BOX_ARG_RE.match(text, start)
    if bare is None:
        return None, start
    return bare.group(1).rstrip(_BARE_TRAILING), bare.end(1)


def _matching_braces(text: str, start: int) -> dict[int, int]:
    """Map each ``{`` at or after ``start`` to its ``}``; unbalanced ones are left out."""
    closing: dict[int, int] = {}
    stack: list[int] = []
    for token in _BRACE_RE.finditer(text, start):
        char = token.group()
        if char == "{":
            stack.append(token.start())
        elif char == "}" and stack:
            closing[stack.pop()] = token.start()
    return closing


def brace_depth(text: str) -> int:
    """Deepest ``{`` nesting in ``text`` (escaped braces ignored)."""
    depth = deepest = 0
    for token in _BRACE_RE.finditer(text):
        char = token.group()
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth = max(depth - 1, 0)
    return deepest


def last_stated_answer(text: str) -> str | None:
    """The X of the last "The answer is X", "Answer: X" or "#### X", cleaned.

    X runs from the anchor to the end of its line or to the next anchor, whichever comes first;
    an anchor with nothing usable after it ("... the answer is.") defers to the one before.
    """
    stop = len(text)
    for anchor in reversed(list(_ANCHOR_RE.finditer(text))):
        newline = text.find("\n", anchor.end(), stop)
        answer = _clean_stated(text[anchor.end() : stop if newline < 0 else newline])
        if answer:
            return answer
        stop = anchor.start()
    return None


def _clean_stated(raw: str) -> str:
    """Keep the math of a stated answer: of a phrase ("the largest $n$ is 34"), what follows its
    last "is"; then its first inline formula, else its first sentence up to its first word
    ("5 and the remainder is 2" is 5, "34, since 35 fails" is 34)."""
    raw = raw.strip().strip("*").strip()
    if _PHRASE_START_RE.match(raw):
        raw = raw[_after_last_is(raw) :].strip()
    opening = raw.find("\\(")
    closing = raw.find("\\)", opening + 2) if opening >= 0 else -1
    dollar = _DOLLAR_MATH_RE.search(raw)
    if dollar and _currency(dollar.group(1)):
        dollar = None  # "$18. So he pays $18": two prices, not one formula
    if dollar and (closing < 0 or dollar.start() < opening):
        return dollar.group(1).strip()
    if closing >= 0:
        return raw[opening + 2 : closing].strip()
    end = _SENTENCE_END_RE.search(raw)
    sentence = raw[: end.start()] if end else raw
    word = _TRAILING_WORDS_RE.search(sentence)
    return strip_math_delimiters(sentence[: word.start()] if word else sentence).rstrip(",;")


def _currency(span: str) -> bool:
    """Whether the text between two `$` is prose between two prices: it starts with a number
    and ends with a space ("$18 per day, i.e. $126"), where a formula ends with its last term."""
    return span[:1].isdigit() and span[-1:].isspace()


def _after_last_is(raw: str) -> int:
    """Where the answer starts in "The largest $n$ is 34. ...": after the first sentence's
    last "is" / "are" outside inline math (0 when there is none)."""
    # An answer sentence is short; the cap keeps the scan linear in a hostile response.
    masked = _INLINE_MATH_RE.sub(lambda m: "$" * len(m.group()), raw[:_MAX_SENTENCE_CHARS])
    end = _SENTENCE_END_RE.search(masked)
    sentence = masked[: end.start()] if end else masked
    found = [m.end() for m in _IS_RE.finditer(sentence)]
    return found[-1] if found and sentence[found[-1] :].strip() else 0


def strip_math_delimiters(answer: str) -> str:
    """Drop surrounding ``$...$``, ``\\(...\\)``, ``\\[...\\]``, bold markers and a final period."""
    answer = answer.strip().strip("*").strip().rstrip(".").rstrip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        fits = len(answer) >= len(left) + len(right)
        if fits and answer.startswith(left) and answer.endswith(right):
            answer = answer[len(left) : -len(right)].strip()
            break
    return answer.rstrip(".").strip()
