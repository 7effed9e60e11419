"""Settings of the math-grader service: environment variables, overridden by CLI flags.

Each field ``name`` is read from ``GRADER_<NAME>`` and from ``--<name-with-dashes>`` (flags win);
the job name comes from ``DISTILL_JOB_NAME`` / ``--job-name``:

- ``GRADER_HOST`` / ``--host``: ``0.0.0.0``
- ``GRADER_PORT`` / ``--port``: ``8000``
- ``GRADER_WORKERS`` / ``--workers``: ``2`` grading processes
- ``GRADER_ITEM_TIMEOUT_S`` / ``--item-timeout-s``: ``10`` seconds per item
- ``GRADER_REQUEST_TIMEOUT_S`` / ``--request-timeout-s``: ``120`` seconds per request (then its
  remaining items are ``timeout``)
- ``GRADER_MAX_BATCH`` / ``--max-batch``: ``4096`` items per request (more: 422)
- ``GRADER_MAX_RESPONSE_CHARS`` / ``--max-response-chars``: ``32768`` (longer: ``too_long``)
- ``GRADER_MAX_BODY_BYTES`` / ``--max-body-bytes``: ``67108864``, 64 MiB (larger: 413)
- ``GRADER_GRACEFUL_TIMEOUT_S`` / ``--graceful-timeout-s``: ``25`` s to drain on SIGTERM
- ``GRADER_LOG_LEVEL`` / ``--log-level``: ``info``
- ``DISTILL_JOB_NAME`` / ``--job-name``: ``local``, the ``distilljob`` label of the metrics
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class GraderSettings(BaseSettings):
    """One typed config for the service; every field has an env var and a flag."""

    model_config = SettingsConfigDict(env_prefix="GRADER_", populate_by_name=True)

    host: str = Field("0.0.0.0", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    workers: int = Field(2, ge=1, le=64, description="Grading worker processes.")
    item_timeout_s: float = Field(10.0, gt=0, le=300, description="Per-item grading deadline.")
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Per-request budget: then the request's remaining items are 'timeout'.",
    )
    max_batch: int = Field(4096, ge=1, description="Most items in one request.")
    max_response_chars: int = Field(
        32768, ge=1, description="Longer responses or ground truths are graded 'too_long'."
    )
    max_body_bytes: int = Field(64 * 2**20, ge=1, description="Larger request bodies get 413.")
    graceful_timeout_s: float = Field(
        25.0, gt=0, description="On SIGTERM, how long in-flight batches may still run."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of uvicorn and the grader."
    )
    job_name: str = Field(
        "local",
        validation_alias="DISTILL_JOB_NAME",
        description="DistillJob name, the 'distilljob' label of every metric.",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill_grader",
        description="Serve the math grader (POST /v1/grade). Flags override GRADER_* env vars.",
    )
    for name, field in GraderSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation if field.annotation in (int, float) else str
        parser.add_argument(flag, dest=name, type=kind, default=None, help=field.description)
    return parser


def load_settings(argv: Sequence[str] | None = None) -> GraderSettings:
    """Settings from the environment with ``argv`` flags on top; bad values exit with usage."""
    parser = build_parser()
    flags = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return GraderSettings(**flags)
    except ValidationError as error:
        problems = "; ".join(f"{_source(e['loc'])}: {e['msg']}" for e in error.errors())
        parser.error(f"invalid grader settings: {problems}")  # exits with status 2
        raise


def _source(loc: tuple[int | str, ...]) -> str:
    """Name a bad setting the way the operator spells it: flag and env var."""
    name = str(loc[0]) if loc else "?"
    if name == "DISTILL_JOB_NAME":
        return "--job-name / DISTILL_JOB_NAME"
    return f"--{name.replace('_', '-')} / GRADER_{name.upper()}"
