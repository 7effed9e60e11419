"""Local checkpoints: `<root>/global_step_<N>/` holding the student (save_pretrained + tokenizer)
and `trainer_state.json`; only the `keep` newest are kept. S3 upload comes in a later issue.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from distill_api import DistillJobSpec
from distill_trainer.roles import Actor

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^global_step_(\d+)$")
DEFAULT_KEEP = 3


def checkpoint_root(spec: DistillJobSpec, output_dir: Path) -> Path:
    """spec.checkpoint.uri when it is a local path, else `<output_dir>/checkpoints`."""
    uri = spec.checkpoint.uri if spec.checkpoint else None
    if uri and uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if uri and "://" not in uri:
        return Path(uri)
    if uri:
        log.warning("checkpoint.uri %s: remote upload is not implemented yet; saving locally", uri)
    return output_dir / "checkpoints"


def save_checkpoint(actor: Actor, root: Path, step: int, keep: int, state: dict[str, Any]) -> Path:
    """Save the student at `step` under `root`, then delete all but the `keep` newest."""
    path = root / f"global_step_{step}"
    path.mkdir(parents=True, exist_ok=True)
    actor.save(str(path))
    (path / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    prune_checkpoints(root, keep)
    return path


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(_STEP_DIR.match(p.name), p) for p in root.iterdir() if p.is_dir()]
    return sorted((int(m.group(1)), p) for m, p in found if m)


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints; returns the deleted paths."""
    stale = [path for _, path in list_checkpoints(root)[:-keep]]
    for path in stale:
        shutil.rmtree(path)
        log.info("deleted old checkpoint %s", path)
    return stale
