"""What goes into a checkpoint besides the manifest, and how each part is written and read.

    <checkpoint>/actor/     model.safetensors: the full state dict under the module's own names
                            (a tied weight stored once, its aliases in the file's metadata), with
                            config.json and the tokenizer beside it, so a plain student loads
                            with transformers on its own; and trainer_state.pt (optimizer state,
                            shuffling generator, update count, LR scheduler, every rank's torch
                            RNG: everything `_Trainer.state_dict()` returns but the weights)
    <checkpoint>/critic/    the same for the critic (gae only), without a tokenizer
    <checkpoint>/driver_state.pt   step, epoch, data position, the driver's RNG states (python,
                            numpy, torch) and the rollout engine's sampling state

Model and optimizer states are full (unsharded) CPU tensors from
torch.distributed.checkpoint.state_dict, so the same files serve a plain module and an FSDP2
group of any size: every rank calls save and load (gathering is collective), rank 0 writes.
`.pt` files are read back with `weights_only=True`: tensors and plain Python values only.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from distill_trainer.checkpoint.store import open_store, readable_dir, writable_dir

TRAINER_STATE = "trainer_state.pt"
WEIGHTS = "model.safetensors"
DRIVER_STATE = "driver_state.pt"


def is_writer() -> bool:
    """Rank 0 of the role's process group writes (every process when there is no group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


def file_sizes(local: Path, prefix: str) -> dict[str, int]:
    return {
        f"{prefix}/{p.relative_to(local).as_posix()}": p.stat().st_size
        for p in sorted(local.rglob("*"))
        if p.is_file()
    }


def write_role_state(
    uri: str, role: str, model: Any, state: dict[str, Any], tokenizer: Any = None
) -> dict[str, int]:
    """Write `<uri>/<role>/` from `state` (`state["model"]`: the full model state dict);
    returns the files written (path relative to `uri` → size); {} on ranks other than 0."""
    if not is_writer():
        return {}
    store = open_store(uri, check=False)
    with writable_dir(store, role) as local:
        save_weights(state["model"], local / WEIGHTS)
        model.config.save_pretrained(local)
        if tokenizer is not None:
            tokenizer.save_pretrained(local)
        torch.save({k: v for k, v in state.items() if k != "model"}, local / TRAINER_STATE)
        return file_sizes(local, role)


def read_role_state(uri: str, role: str) -> dict[str, Any]:
    """What `write_role_state` wrote, as one state dict for `_Trainer.load_state_dict`."""
    store = open_store(uri, check=False)
    with readable_dir(store, role) as local:
        weights = load_weights(local / WEIGHTS)
        rest = torch.load(local / TRAINER_STATE, weights_only=True)
    return {"model": weights, **rest}


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A full state dict as safetensors, keys unchanged (any module: plain, peft, FSDP-gathered).

    safetensors refuses tensors sharing memory; a tied weight (lm_head = embed_tokens) is
    stored once under its first name and the others recorded as aliases in the metadata."""
    first: dict[tuple[Any, ...], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if view in first:
            aliases[name] = first[view]
            continue
        first[view] = name
        pointer = tensor.untyped_storage().data_ptr()
        # A different view of storage already kept: give it storage of its own.
        tensors[name] = tensor.clone() if pointer in storages else tensor.contiguous()
        storages.add(pointer)
    save_file(tensors, path, metadata={"format": "pt", "aliases": json.dumps(aliases)})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as file:
        aliases = json.loads((file.metadata() or {}).get("aliases", "{}"))
    weights = load_file(path)
    for name, source in aliases.items():
        weights[name] = weights[source]
    return weights


@contextmanager
def _replacing(uri: str) -> Iterator[Path | None]:
    """A local directory whose files replace whatever is at `uri` (on rank 0; None elsewhere,
    where nothing is written)."""
    if not is_writer():
        yield None
        return
    store = open_store(uri, check=False)
    store.delete("")
    with writable_dir(store, "") as local:
        yield local


def export_pretrained(uri: str, model: Any, model_state: dict[str, Any], tokenizer: Any) -> None:
    """Replace whatever is at `uri` with the model in Hugging Face format, from a full state
    dict so that it works for FSDP too (rank 0 writes)."""
    with _replacing(uri) as local:
        if local is not None:
            model.save_pretrained(local, state_dict=model_state)
            tokenizer.save_pretrained(local)


def export_adapter(uri: str, config: Any, tensors: dict[str, Any], tokenizer: Any) -> None:
    """A LoRA adapter in peft's format at `uri` (adapter_config.json, adapter_model.safetensors,
    the tokenizer): what `PeftModel.from_pretrained(base, uri)` loads. Rank 0 writes."""
    with _replacing(uri) as local:
        if local is not None:
            config.save_pretrained(local)
            save_file(tensors, local / "adapter_model.safetensors", metadata={"format": "pt"})
            tokenizer.save_pretrained(local)


def capture_torch_rng() -> dict[str, Any]:
    """This process's torch generators (CPU, and every CUDA device it sees)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_torch_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_rng() -> dict[str, Any]:
    """Python's, numpy's and torch's global RNG states (numpy's as plain lists and ints)."""
    np_state = np.random.get_state(legacy=False)
    numpy = {**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()}}
    return {"python": random.getstate(), "numpy": numpy, **capture_torch_rng()}


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    key = np.array(numpy["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": key}})
    restore_torch_rng(state)
