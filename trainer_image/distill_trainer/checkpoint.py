"""Local checkpoints: `<root>/global_step_<N>/` holding the student (save_pretrained + tokenizer)
and `trainer_state.json`. S3 upload comes in a later issue.

A `CheckpointWriter` lives with the actor, not the driver: on a cluster the actor runs on its own
pod, so writing the model, writing trainer_state.json and pruning must all happen on the disk the
actor writes to. It prunes only the checkpoints it wrote itself, never the one it has just saved,
and leaves an earlier run's checkpoints in the same root alone (a warning says they are there).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill_api import DistillJobSpec

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


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(_STEP_DIR.match(p.name), p) for p in root.iterdir() if p.is_dir()]
    return sorted((int(m.group(1)), p) for m, p in found if m)


class CheckpointWriter:
    """Saves this run's checkpoints under `root` and keeps the `keep` newest of them."""

    def __init__(self, root: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be ≥ 1, got {keep!r}")
        self.root, self.keep = root, keep
        self.written: list[Path] = []  # this run's checkpoints, oldest first
        earlier = [step for step, _ in list_checkpoints(root)]
        if earlier:
            log.warning(
                "checkpoint root %s already holds %d checkpoints of an earlier run (steps %s); "
                "they are left alone and never pruned",
                root,
                len(earlier),
                earlier,
            )

    def save(self, step: int, save_model: Callable[[str], None], state: dict[str, Any]) -> Path:
        """`save_model(dir)`, then trainer_state.json, then prune; returns the new directory."""
        path = self.root / f"global_step_{step}"
        if path.exists() and path not in self.written:
            # Mixing our files with another run's (e.g. other weight shards) would be corrupt.
            log.warning("replacing %s, left by an earlier run", path)
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        save_model(str(path))
        (path / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        self.written = [p for p in self.written if p != path] + [path]
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Delete this run's checkpoints but the `keep` newest; returns the deleted paths."""
        stale, self.written = self.written[: -self.keep], self.written[-self.keep :]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted old checkpoint %s", path)
        return stale
