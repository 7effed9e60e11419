"""Names of owned objects: deterministic, within Kubernetes' limits, distinct for distinct jobs."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from distill_operator.builders import names

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# DistillJob names: the pattern and length the API model accepts.
job_names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def test_short_names_are_kept_readable() -> None:
    assert names.rayjob_name("math-distill") == "math-distill"
    assert names.grader_name("math-distill") == "math-distill-grader"
    assert names.trainer_service_name("math-distill") == "math-distill-trainer"
    assert names.spec_configmap_name("math-distill") == "math-distill-spec"
    assert names.grader_url("math-distill", "research", 8000) == (
        "http://math-distill-grader.research.svc:8000"
    )


def test_long_name_is_cut_with_a_hash_of_the_full_name() -> None:
    job = "qwen2-5-1-5b-from-qwen2-5-7b-instruct-on-math-lr1e-6-kl0-1"  # 58 characters
    rayjob = names.rayjob_name(job)
    assert len(rayjob) == 47
    assert rayjob.startswith("qwen2-5-1-5b-from-qwen2-5-7b-instruct-on-")
    # Same prefix, different tail: different names.
    assert names.rayjob_name(job[:-1] + "2") != rayjob
    grader = names.grader_name(job)
    assert len(grader) <= 63 and grader.endswith("-grader")


def test_leading_digit_gets_a_letter_prefix_that_no_plain_name_takes() -> None:
    rayjob = names.rayjob_name("7b-distill")
    assert re.fullmatch(r"dj-[0-9a-f]{6}-7b-distill", rayjob), rayjob
    assert names.trainer_service_name("7b-distill") == f"{rayjob}-trainer"
    # `dj-7b-distill` is a valid job name of its own: its children must not be these.
    assert names.rayjob_name("dj-7b-distill") == "dj-7b-distill" != rayjob


@given(job_names)
def test_every_valid_job_name_gives_valid_child_names(job: str) -> None:
    assert DNS1035.match(names.rayjob_name(job)) and len(names.rayjob_name(job)) <= 47
    for child in (names.grader_name(job), names.trainer_service_name(job)):
        assert DNS1035.match(child) and len(child) <= 63
    assert names.rayjob_name(job) == names.rayjob_name(job)
