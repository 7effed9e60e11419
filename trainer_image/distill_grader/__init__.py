"""distill-operator's math grader: answer extraction, math-verify grading, HTTP service, client.

The trainer imports only this package's top level (no torch, no FastAPI)::

    from distill_grader import GradeRequestItem, make_grader

Modules: ``extract`` (find the final answer), ``grading`` (math-verify comparison, run in
workers), ``pool`` (worker processes with per-item deadlines), ``service`` / ``config`` /
``metrics`` (the FastAPI app), ``client`` (HTTP client and in-process fallback). Run the service
with ``python -m distill_grader --port 8000``.
"""

from distill_grader.client import (
    GRADER_URL_ENV,
    Grader,
    GraderError,
    HttpGraderClient,
    LocalGrader,
    make_grader,
)
from distill_grader.schema import GradeRequestItem, GradeResult, Reason

__all__ = [
    "GRADER_URL_ENV",
    "GradeRequestItem",
    "GradeResult",
    "Grader",
    "GraderError",
    "HttpGraderClient",
    "LocalGrader",
    "Reason",
    "make_grader",
]
