"""The DistillJob API (distill.dev/v1alpha1): one pydantic model, the source of truth for the CRD.

Importable without torch or ray: the operator, the trainer and the CRD generator all share it.
"""

from distill_api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    AdvEstimator,
    DistillJob,
    DistillJobSpec,
    DistillJobStatus,
    JobPhase,
    KlEstimator,
    format_validation_error,
    load_job,
    load_job_file,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "AdvEstimator",
    "DistillJob",
    "DistillJobSpec",
    "DistillJobStatus",
    "JobPhase",
    "KlEstimator",
    "format_validation_error",
    "load_job",
    "load_job_file",
]
