"""The role interfaces the driver calls: rollout engine, actor (student), teacher, critic.

The driver only ever calls these methods, so an implementation can live in the driver's process
(roles/rollout_hf.py, roles/trainer.py) or behind a Ray actor group (roles/group.py) without the
loop changing. Tensors cross the interface on the CPU; each role moves them to its own device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from distill_trainer.batch import RolloutBatch, pad_cat, position_ids_from_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """How the rollout engine samples; `greedy` ignores temperature and top_p."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    logprobs: bool = True  # also return the behaviour logprob of each sampled token
    # None: draw from the engine's own stream, which moves on (training). A seed: this call alone
    # draws from it and the engine's stream stays where it was (validation: how often it runs
    # must not change the training samples, or a resume with another testFreq would).
    seed: int | None = None


@dataclass
class Rollouts:
    """Responses to a list of prompts, n per prompt, prompt-major (row i·n + j)."""

    prompt_ids: Tensor  # [N, P] left-padded
    prompt_mask: Tensor  # [N, P]
    response_ids: Tensor  # [N, R] right-padded
    response_mask: Tensor  # [N, R] float, 1.0 up to and including the first EOS
    logprobs: Tensor | None  # [N, R] behaviour logprobs, 0.0 on padding
    truncated: Tensor  # [N] bool: cut at max_new_tokens without an EOS
    weight_version: int = 0  # the `Weights.version` the engine sampled with
    entropy: Tensor | None = None  # [N, R] entropy of each sampling distribution (HF engine)

    def expect_weight_version(self, expected: int) -> None:
        """Raise `StaleWeightsError` unless these were sampled with weights `expected`."""
        if self.weight_version != expected:
            raise StaleWeightsError(
                f"rollouts were sampled with weight version {self.weight_version}, but the actor "
                f"synced version {expected}: the rollout engine missed a weight sync"
            )

    def to_batch(self, n: int) -> RolloutBatch:
        """The training batch layout, with group ids = prompt index (n responses each)."""
        attention_mask = torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)
        return RolloutBatch(
            input_ids=torch.cat([self.prompt_ids, self.response_ids], dim=1),
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            response_mask=self.response_mask,
            group_ids=torch.arange(self.prompt_ids.shape[0] // n).repeat_interleave(n),
            rollout_logprobs=self.logprobs,
            rollout_entropy=self.entropy,
            truncated=self.truncated,
        )

    @staticmethod
    def concat(parts: list[Rollouts], pad_token_id: int) -> Rollouts:
        """Rows of several Rollouts in order, re-padded to common widths."""
        if len(parts) == 1:
            return parts[0]
        versions = sorted({p.weight_version for p in parts})
        if len(versions) > 1:
            raise StaleWeightsError(f"rollout replicas hold different weight versions {versions}")

        def responses(name: str) -> Tensor | None:
            tensors = [getattr(p, name) for p in parts]
            if any(t is None for t in tensors):
                return None
            return pad_cat(tensors, 0.0, left=False)

        return Rollouts(
            prompt_ids=pad_cat([p.prompt_ids for p in parts], pad_token_id, left=True),
            prompt_mask=pad_cat([p.prompt_mask for p in parts], 0, left=True),
            response_ids=pad_cat([p.response_ids for p in parts], pad_token_id, left=False),
            response_mask=pad_cat([p.response_mask for p in parts], 0.0, left=False),
            logprobs=responses("logprobs"),
            truncated=torch.cat([p.truncated for p in parts]),
            weight_version=versions[0],
            entropy=responses("entropy"),
        )


class StaleWeightsError(RuntimeError):
    """Rollouts sampled with other weights than the actor's last sync: never trained on."""


DEFAULT_BUCKET_BYTES = 256 << 20  # weight-sync bucket size (verl and vLLM use 256 MiB–1 GiB)
REPLICA_STATES = "replicas"  # a rollout group's sampling state: the list of every replica's


def replica_sampling_states(state: dict[str, Any], replicas: int) -> list[dict[str, Any]]:
    """The per-replica states in a checkpoint's rollout sampling state: a group's list, or one
    engine's state (saved in-process) as replica 0's. The backend is not a math field, so a
    checkpoint of either kind may resume under the other; a warning when the `replicas` now
    running are not as many."""
    states = state.get(REPLICA_STATES, [state])
    if len(states) != replicas:
        log.warning(
            "the checkpoint holds the sampling state of %d rollout replicas, this run has %d: "
            "the samples will differ from the interrupted run's",
            len(states), replicas,
        )  # fmt: skip
    return states


@dataclass
class Weights:
    """The actor's weights for the rollout engines: named tensors in size-capped buckets.

    The one weight-sync payload: the actor (one process or a sharded group) produces it, every
    engine consumes `items()` in bucket order. `version` counts the actor's weight updates, so an
    engine can tell which weights it holds and rollouts can say which weights sampled them.
    """

    version: int
    buckets: list[dict[str, Tensor]] = field(default_factory=list)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        for bucket in self.buckets:
            yield from bucket.items()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.items())


def unaliased_state(model: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """State-dict entries (FSDP shards as DTensors), each parameter once: a tied lm_head is the
    embedding's own parameter, so it is skipped before any gather, on every rank alike (after a
    gather or a cast the two no longer share memory, and nothing could tell them apart)."""
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        yield name, tensor


def bucketed(
    named: Iterable[tuple[str, Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> list[dict[str, Tensor]]:
    """Group named tensors, in order, into buckets of at most `bucket_bytes` (a larger tensor
    gets a bucket of its own)."""
    buckets: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append({})
            size = 0
        buckets[-1][name] = tensor
        size += nbytes
    return [b for b in buckets if b]


@dataclass(frozen=True)
class LogprobOutput:
    """The actor's pass over a batch: token logprobs and, when asked, token entropies."""

    logprobs: Tensor  # [N, R]
    entropy: Tensor | None = None  # [N, R]


class RolloutEngine(Protocol):
    def generate(
        self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams
    ) -> Rollouts: ...

    def load_weights(self, weights: Weights) -> dict[str, float]:
        """Take the actor's weights (what `Actor.get_weights` returned); rollouts sampled after
        this carry `weights.version`. Returns `weight_sync/bytes`: bytes this engine received."""

    def sampling_state(self) -> dict[str, Any]:
        """What the next samples depend on besides the weights (RNG states, seed counters), so
        a resumed run samples the responses the interrupted one would have."""

    def load_sampling_state(self, state: dict[str, Any]) -> None: ...


class Actor(Protocol):
    def compute_logprobs(
        self, batch: RolloutBatch, with_entropy: bool = False
    ) -> LogprobOutput: ...

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """PPO epochs × mini-batches on the batch's advantages; returns mean metrics."""

    def get_weights(self) -> Weights:
        """The current weights, full (gathered from shards where sharded), in buckets."""

    def save_checkpoint(self, uri: str) -> dict[str, int]:
        """Write `<uri>/actor/`: the student (Hugging Face format), tokenizer, optimizer and
        trainer state; returns the files written (path under `uri` → bytes). Every rank of a
        sharded group calls it; rank 0 writes. The driver commits the checkpoint afterwards."""

    def load_checkpoint(self, uri: str) -> None:
        """Continue from what `save_checkpoint(uri)` wrote (weights, optimizer, trainer state)."""

    def export_model(self, uri: str) -> None:
        """The student in Hugging Face format (save_pretrained + tokenizer) at `uri`."""


class Teacher(Protocol):
    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        """[N, R] logprobs of the sampled response tokens, computed micro-batch by micro-batch."""


class Critic(Protocol):
    def compute_values(self, batch: RolloutBatch) -> Tensor: ...

    def update(self, batch: RolloutBatch) -> dict[str, float]: ...

    def save_checkpoint(self, uri: str) -> dict[str, int]:
        """Write `<uri>/critic/` like `Actor.save_checkpoint`."""

    def load_checkpoint(self, uri: str) -> None: ...
