"""The manifest that commits a checkpoint, and the spec fields that change the math.

A checkpoint is `<uri>/global_step_<N>/`; it counts only once its `manifest.json` exists, and the
manifest is written last (one atomic object write), so a checkpoint cut short by a crash or a
preemption has none and is ignored. The manifest names the job, the step, every file the
checkpoint holds (with its size, checked on resume) and the values of the math-changing spec
fields with their hash: a run resumes only from a checkpoint of the same math.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from distill_api import DistillJobSpec
from distill_api.v1alpha1 import LrSchedule

FORMAT = "distill-checkpoint/v1"
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^global_step_(\d+)$")

# Changing these mid-run only changes when things happen, not what a step computes.
SCHEDULE_FIELDS = frozenset(
    {"training.saveFreq", "training.testFreq", "training.totalSteps", "training.numEpochs"}
)
# ... except under a cosine learning rate, which decays over the run's length.
RUN_LENGTH_FIELDS = frozenset({"training.totalSteps", "training.numEpochs"})
MATH_SECTIONS = ("student", "teacher", "algorithm", "training", "rollout")


class CorruptManifest(ValueError):
    """A manifest.json that cannot be parsed or lacks a field; the message says what."""


def step_dir(step: int) -> str:
    return f"global_step_{step}"


def math_fields(spec: DistillJobSpec, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat `section.field` (camelCase, as in YAML) → value of everything that shapes the updates:
    models, algorithm, training (but its schedule; the run's length too under a cosine learning
    rate), rollout sampling, the training data, and the run options that enter the loss
    (`options.*`)."""
    document = spec.model_dump(mode="json", by_alias=True)
    fields: dict[str, Any] = {"data.train": spec.data.train}
    for section in MATH_SECTIONS:
        fields.update(_flatten(document.get(section), section))
    fields.update(_flatten(options or {}, "options"))
    schedule_only = SCHEDULE_FIELDS
    if spec.training.lr_schedule == LrSchedule.COSINE:
        schedule_only = SCHEDULE_FIELDS - RUN_LENGTH_FIELDS
    return {k: v for k, v in sorted(fields.items()) if k not in schedule_only}


def _flatten(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {path: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{path}.{key}"))
    return flat


def fields_hash(fields: dict[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`field: <saved> in the checkpoint, <current> now` for every field that differs."""
    return [
        f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


@dataclass
class Manifest:
    """What manifest.json says about one committed checkpoint."""

    job: str
    step: int
    epoch: int
    spec_hash: str
    math: dict[str, Any]
    files: dict[str, int]  # path relative to the checkpoint → size in bytes
    roles: list[str]
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format: str = FORMAT
    uri: str = field(default="", compare=False)  # where it was read from (not written)

    def to_json(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if k != "uri"}
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes, uri: str) -> Manifest:
        """Raises CorruptManifest on anything but a complete manifest of this format."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptManifest(f"not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise CorruptManifest(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise CorruptManifest(f"format {data.get('format')!r}, expected {FORMAT!r}")
        types = {
            "job": str,
            "step": int,
            "epoch": int,
            "spec_hash": str,
            "math": dict,
            "files": dict,
            "roles": list,
            "created": str,
        }
        for key, kind in types.items():
            if not isinstance(data.get(key), kind):
                raise CorruptManifest(f"field {key!r} missing or not a {kind.__name__}")
        return cls(**{k: data[k] for k in types}, uri=uri)
