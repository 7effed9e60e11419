"""One job's checkpoints under its checkpoint URI: find the one to resume from, commit, prune.

The driver owns this: roles write their parts of `global_step_<N>/` (weights, optimizer, their
trainer state), the driver adds its own (`driver_state.pt`: step, data position, RNG states),
then commits with the manifest and prunes. Pruning keeps this job's `keep` newest committed
checkpoints and deletes only after the newer one is committed; it never touches a directory
without a manifest it can read, nor a checkpoint whose manifest names another job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from distill_trainer.checkpoint.manifest import (
    MANIFEST,
    STEP_DIR,
    CorruptManifest,
    Manifest,
    differing_fields,
    fields_hash,
    step_dir,
)
from distill_trainer.checkpoint.store import (
    CheckpointError,
    CheckpointStore,
    open_store,
    split_uri,
)

log = logging.getLogger(__name__)

FINAL_DIR = "final"


@dataclass(frozen=True)
class ResumePoint:
    manifest: Manifest
    store: CheckpointStore  # the store that holds it (the job's, or --resume-from's parent)

    @property
    def uri(self) -> str:
        return self.manifest.uri

    @property
    def name(self) -> str:
        """Its directory's name in `store` (global_step_<N>)."""
        return split_uri(self.manifest.uri)[1]


def read_manifest(store: CheckpointStore, name: str) -> Manifest | None:
    """The manifest of `name`, None when it has none; CorruptManifest when unreadable."""
    try:
        raw = store.read_bytes(f"{name}/{MANIFEST}")
    except FileNotFoundError:
        return None
    return Manifest.parse(raw, store.uri_of(name))


def verify_files(store: CheckpointStore, manifest: Manifest) -> None:
    """Every file the manifest lists is there with its size (a half-deleted or truncated
    checkpoint fails here, before any role loads from it)."""
    found = store.list_files(split_uri(manifest.uri)[1])
    bad = [
        f"{path} ({'missing' if path not in found else f'{found[path]} bytes, not {size}'})"
        for path, size in sorted(manifest.files.items())
        if found.get(path) != size
    ]
    if bad:
        raise CheckpointError(f"checkpoint {manifest.uri} is incomplete: {', '.join(bad[:5])}")


class JobCheckpoints:
    """The checkpoints of job `job` under `uri`, `keep` of them kept."""

    def __init__(self, uri: str, job: str, math: dict[str, Any], keep: int) -> None:
        if keep < 1:
            raise CheckpointError(f"checkpoint.keep must be ≥ 1, got {keep!r}")
        self.store = open_store(uri)
        self.uri, self.job, self.keep = self.store.uri, job, keep
        self.math, self.spec_hash = math, fields_hash(math)

    def step_uri(self, step: int) -> str:
        return self.store.uri_of(step_dir(step))

    @property
    def final_uri(self) -> str:
        return self.store.uri_of(FINAL_DIR)

    def committed(self) -> list[Manifest]:
        """This job's committed checkpoints, oldest first. Directories without a manifest (cut
        short) are skipped; corrupt manifests are reported and skipped; other jobs' ignored."""
        found = []
        for name in self.store.list_dirs():
            if not STEP_DIR.match(name):
                continue
            try:
                manifest = read_manifest(self.store, name)
            except CorruptManifest as err:
                log.error("checkpoint %s: corrupt manifest.json, skipped: %s", name, err)
                continue
            if manifest is None:
                log.info("checkpoint %s has no manifest (interrupted), skipped", name)
            elif manifest.job != self.job:
                log.info("checkpoint %s belongs to job %s, not ours: ignored", name, manifest.job)
            else:
                found.append(manifest)
        return sorted(found, key=lambda m: m.step)

    def resume_point(self, explicit: str | None = None, force: bool = False) -> ResumePoint | None:
        """The checkpoint to continue from: `explicit` (--resume-from) or this job's newest
        committed one; None for a fresh start. Refused when its math differs unless `force`."""
        if explicit:
            point = self._explicit(explicit)
        else:
            newest = self.committed()[-1:]
            point = ResumePoint(newest[0], self.store) if newest else None
        if point is None:
            return None
        self.check_math(point.manifest, force)
        verify_files(point.store, point.manifest)
        return point

    def _explicit(self, uri: str) -> ResumePoint:
        parent, name = split_uri(uri)
        store = open_store(parent, check=parent.startswith("s3://"))  # no mkdir for a read
        try:
            manifest = read_manifest(store, name)
        except CorruptManifest as err:
            raise CheckpointError(f"--resume-from {uri}: corrupt manifest.json: {err}") from None
        if manifest is None:
            raise CheckpointError(
                f"--resume-from {uri}: not a committed checkpoint (no {MANIFEST}; a checkpoint "
                "cut short before its manifest cannot be resumed from)"
            )
        if manifest.job != self.job:
            log.warning("resuming job %s from a checkpoint of job %s", self.job, manifest.job)
        return ResumePoint(manifest, store)

    def check_math(self, manifest: Manifest, force: bool) -> None:
        if manifest.spec_hash == self.spec_hash:
            return
        changes = differing_fields(manifest.math, self.math)
        if not force:
            raise CheckpointError(
                f"checkpoint {manifest.uri} was trained with different math-changing settings: "
                f"{'; '.join(changes)}. Resuming would not continue the same run: use "
                "--force-resume to continue anyway, or another checkpoint.uri to start afresh"
            )
        log.warning("--force-resume: resuming %s despite: %s", manifest.uri, "; ".join(changes))

    def begin(self, step: int) -> str:
        """The URI to write step `step` to, emptied of anything a crashed attempt left there."""
        name = step_dir(step)
        try:
            previous = read_manifest(self.store, name)
        except CorruptManifest:
            previous = None
        if previous is not None and previous.job != self.job:
            raise CheckpointError(
                f"checkpoint.uri {self.uri}: {name} holds a checkpoint of job {previous.job}; "
                "two jobs cannot share a checkpoint URI"
            )
        if previous is not None or self.store.list_files(name):
            log.warning("replacing %s, left by an earlier attempt", self.store.uri_of(name))
            self._discard(name)
        return self.step_uri(step)

    def _discard(self, name: str) -> None:
        # Manifest first: a delete cut short (the process killed, an S3 batch failing) leaves an
        # uncommitted directory that resume skips, never a committed one with files missing.
        self.store.remove(f"{name}/{MANIFEST}")
        self.store.delete(name)

    def commit(self, step: int, epoch: int, files: dict[str, int], roles: list[str]) -> Manifest:
        """Write the manifest (the checkpoint now counts), then prune; returns the manifest."""
        manifest = Manifest(
            job=self.job,
            step=step,
            epoch=epoch,
            spec_hash=self.spec_hash,
            math=self.math,
            files=dict(sorted(files.items())),
            roles=roles,
            uri=self.step_uri(step),
        )
        self.store.write_bytes(f"{step_dir(step)}/{MANIFEST}", manifest.to_json())
        self.prune(step)
        return manifest

    def prune(self, newest: int) -> list[str]:
        """Delete this job's committed checkpoints but the `keep` newest up to step `newest`;
        those after it are from a history abandoned by resuming earlier, and go too."""
        ours = self.committed()
        stale = [m for m in ours if m.step > newest]
        for manifest in stale:
            log.warning("deleting %s: later than the resumed history", manifest.uri)
        kept = [m for m in ours if m.step <= newest]
        stale += kept[: -self.keep]
        for manifest in stale:
            self._discard(step_dir(manifest.step))
            log.info("deleted old checkpoint %s", manifest.uri)
        return [m.uri for m in stale]
