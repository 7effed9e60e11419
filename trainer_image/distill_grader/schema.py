"""Wire types of the math grader: request items, results and the reason vocabulary.

The HTTP service, the trainer's client and the in-process fallback all speak these types, so the
trainer never depends on which one it was given. Strings are cleaned on the way in: lone UTF-16
surrogates (what ``"\\udcff"`` in JSON or bytes decoded with ``surrogateescape`` produce) become
U+FFFD, so every result can always be encoded as UTF-8 again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The data_source of items that name none; any source without a rule of its own is graded as math.
DEFAULT_SOURCE = "math"
MAX_SOURCE_CHARS = 256


class Reason(StrEnum):
    """Why an item got its score; only ``correct`` scores 1.0."""

    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"  # no \boxed{...}, "The answer is X" or "#### X" in the response
    TIMEOUT = "timeout"  # grading the item ran past its deadline; its worker was replaced
    PARSE_ERROR = "parse_error"  # the answer or the ground truth is not parseable math
    TOO_LONG = "too_long"  # response or ground truth longer than the configured limit


class Verdict(NamedTuple):
    """The grade of one item, before it is paired with its id."""

    score: float
    reason: Reason
    extracted: str | None


def clean_text(text: str) -> str:
    """Return ``text`` with lone surrogates replaced by U+FFFD (paired ones are joined)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class GradeRequestItem(BaseModel):
    """One rollout to grade."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=256, description="Caller's id, echoed in the result.")
    response: str = Field(description="The model's full response text.")
    ground_truth: str = Field(description="The reference answer (LaTeX or plain).")
    data_source: str = Field(
        DEFAULT_SOURCE,
        min_length=1,
        max_length=MAX_SOURCE_CHARS,
        description="The dataset row's data_source: picks the grading rule, labels the metrics.",
    )

    @field_validator("id", "response", "ground_truth", "data_source")
    @classmethod
    def _replace_lone_surrogates(cls, value: str) -> str:
        return clean_text(value)


class GradeResult(BaseModel):
    """The grade of one item; results come back in request order."""

    id: str
    score: float = Field(description="1.0 when reason is 'correct', else 0.0.")
    reason: Reason
    extracted: str | None = Field(description="The final answer found in the response, if any.")


class GradeRequest(BaseModel):
    """Body of ``POST /v1/grade``."""

    model_config = ConfigDict(extra="forbid")

    items: list[GradeRequestItem] = Field(description="Items to grade (at most the max batch).")


class GradeResponse(BaseModel):
    """Answer of ``POST /v1/grade``: one result per item, in request order."""

    results: list[GradeResult]
