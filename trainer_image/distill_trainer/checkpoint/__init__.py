"""Checkpoints that survive the pod: exact resume after a crash or a preemption, the final model.

    <uri>/global_step_<N>/manifest.json     written last: the checkpoint counts once it exists
    <uri>/global_step_<N>/actor/ critic/ driver_state.pt
    <uri>/final/                            the trained student, save_pretrained + tokenizer

`<uri>` is spec.checkpoint.uri (`s3://bucket/prefix` or a local/mounted path), else
`<output_dir>/checkpoints`. store.py: the two backends; manifest.py: the commit record and the
math-changing fields; job.py: finding, committing and pruning one job's checkpoints; state.py:
what each part holds. docs/checkpoints.md describes the layout and the S3 set-up.
"""

from __future__ import annotations

from pathlib import Path

from distill_api import DistillJobSpec
from distill_trainer.checkpoint.job import FINAL_DIR, JobCheckpoints, ResumePoint, read_manifest
from distill_trainer.checkpoint.manifest import MANIFEST, CorruptManifest, Manifest, math_fields
from distill_trainer.checkpoint.store import (
    CheckpointError,
    CheckpointStore,
    CheckpointStoreError,
    LocalStore,
    S3Store,
    open_store,
)

DEFAULT_KEEP = 3

__all__ = [
    "DEFAULT_KEEP",
    "FINAL_DIR",
    "MANIFEST",
    "CheckpointError",
    "CheckpointStore",
    "CheckpointStoreError",
    "CorruptManifest",
    "JobCheckpoints",
    "LocalStore",
    "Manifest",
    "ResumePoint",
    "S3Store",
    "checkpoint_uri",
    "math_fields",
    "open_store",
    "read_manifest",
]


def checkpoint_uri(spec: DistillJobSpec, output_dir: Path) -> str:
    """spec.checkpoint.uri, else `<output_dir>/checkpoints`; local paths made absolute (Ray
    workers may run in another working directory)."""
    uri = spec.checkpoint.uri if spec.checkpoint else str(output_dir / "checkpoints")
    if uri.startswith("s3://"):
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).absolute())
