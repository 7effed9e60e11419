"""LoRA students (peft): wrap the loaded model, and merge adapters into plain named tensors.

Only the adapters train (peft freezes the base weights), so only they reach the optimizer. The
rollout engine and the merged export see the plain model's names and shapes:
`W + (alpha / rank) · B @ A` per adapted linear layer. The merge is a function of named tensors,
not of modules, so it applies unchanged to a full state dict gathered from FSDP shards, and it
never writes into the model (merging in place and unmerging would round the base weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor

from distill_api.v1alpha1 import LoraConfig

_PEFT_PREFIX = "base_model.model."
ADAPTER = "default"  # peft's name of the one adapter


def apply_lora(model: Any, lora: LoraConfig) -> Any:
    """`model` wrapped by peft with fresh adapters (B = 0: the wrapped model equals the base)."""
    import peft

    targets: str | list[str] = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's own spelling: every linear layer but the output head
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        target_modules=targets,
        lora_dropout=lora.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def has_dropout(lora: LoraConfig | None) -> bool:
    """Whether the adapters drop inputs while training (the update then runs in train mode)."""
    return lora is not None and lora.dropout > 0


def lora_scaling(lora: LoraConfig) -> float:
    return lora.alpha / lora.rank


def merged_named_tensors(
    named: Iterable[tuple[str, Tensor]], scaling: float
) -> Iterator[tuple[str, Tensor]]:
    """A peft model's (name, tensor) pairs → the base model's, adapters merged into their weight.

    Streams: only the layers whose base weight, A and B have not all arrived yet are held.
    """
    pending: dict[str, dict[str, Tensor]] = {}
    for name, tensor in named:
        name = name.removeprefix(_PEFT_PREFIX)
        if ".lora_embedding_" in name or ".lora_magnitude_vector" in name:
            raise ValueError(f"{name}: only LoRA on linear layers is supported")
        if ".lora_A." in name or ".lora_B." in name:
            prefix, rest = name.split(".lora_", 1)
            part = rest[0]  # "A" or "B"
        elif ".base_layer." in name:
            prefix, param = name.split(".base_layer.", 1)
            if param != "weight":
                yield f"{prefix}.{param}", tensor
                continue
            part = "W"
        else:
            yield name, tensor
            continue
        layer = pending.setdefault(prefix, {})
        layer[part] = tensor
        if len(layer) == 3:
            del pending[prefix]
            delta = (layer["B"].float() @ layer["A"].float()) * scaling
            yield f"{prefix}.weight", (layer["W"].float() + delta).to(layer["W"].dtype)
    if pending:
        raise ValueError(f"incomplete LoRA layers (no base weight, A or B): {sorted(pending)}")


def adapter_tensors(named: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """The adapters of a peft model's full (name, tensor) pairs, named as peft's
    adapter_model.safetensors names them (the adapter's name dropped: `lora_A.weight`).

    By name, not through peft's save_pretrained: peft matches the state dict's names against
    the model's modules, which activation checkpointing renames (`_checkpoint_wrapped_module`),
    and then saves no tensor at all."""
    return {
        name.replace(f".{ADAPTER}.", "."): tensor.contiguous()
        for name, tensor in named
        if is_adapter(name)
    }


def is_adapter(name: str) -> bool:
    """A trainable LoRA parameter's name (everything else stays frozen)."""
    return ".lora_A." in name or ".lora_B." in name
