"""student.lora: only the adapters train; the engine and the merged export get W + (α/r)·B@A."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from distill_trainer.config import RunOptions
from distill_trainer.driver import train_step
from distill_trainer.roles.lora import is_adapter, merged_named_tensors
from distill_trainer.setup import setup_run

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def lora_run(student_dir: Path, teacher_dir: Path, data_dir: Path, tmp_path_factory):
    """A LoRA student after 3 training steps, with its initial parameters for comparison."""
    from trainer.conftest import job_document

    from distill_api import load_job

    document = job_document(
        student_dir,
        data_dir,
        student={"lora": {"rank": RANK, "alpha": ALPHA}},
        teacher={"model": str(teacher_dir)},  # a different teacher: every token's advantage moves
        training={"learningRate": 1e-2},
    )
    out = tmp_path_factory.mktemp("lora")
    options = RunOptions(backend="inprocess", device="cpu", output_dir=out, progress=False)
    run = setup_run(load_job(document), options)
    actor = run.roles.actor
    initial = {n: p.detach().clone() for n, p in actor.model.named_parameters()}
    for _ in range(3):
        train_step(run, run.train[:2])
    yield run, initial, out
    run.close()


def test_three_steps_leave_every_non_adapter_weight_bit_identical(lora_run) -> None:
    run, initial, _ = lora_run
    model = run.roles.actor.model
    adapters = {n for n, _ in model.named_parameters() if is_adapter(n)}
    assert adapters and len(adapters) < len(initial)
    for name, param in model.named_parameters():
        if name in adapters:
            continue
        assert torch.equal(param, initial[name]), name
        assert not param.requires_grad, name
    moved = [n for n in adapters if not torch.equal(dict(model.named_parameters())[n], initial[n])]
    assert any(".lora_B." in n for n in moved)  # B starts at 0 and must have learnt


def test_only_the_adapters_are_in_the_optimizer(lora_run) -> None:
    run, _, _ = lora_run
    actor = run.roles.actor
    in_optimizer = {
        id(p) for group in actor.trainer.optimizer.param_groups for p in group["params"]
    }
    adapters = {id(p) for n, p in actor.model.named_parameters() if is_adapter(n)}
    assert in_optimizer == adapters


def test_the_engine_receives_merged_weights_under_the_base_names(
    lora_run, student_dir: Path
) -> None:
    run, _, _ = lora_run
    peft_model = run.roles.actor.model
    engine = run.roles.rollout.model
    plain = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    weights = run.roles.actor.get_weights()
    tied = {"lm_head.weight"} if plain.config.tie_word_embeddings else set()  # engines re-tie
    assert {name for name, _ in weights.items()} == set(plain.state_dict()) - tied
    synced = engine.state_dict()
    q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    expected = (
        q.base_layer.weight
        + (ALPHA / RANK) * q.lora_B["default"].weight @ q.lora_A["default"].weight
    )
    torch.testing.assert_close(synced["model.layers.0.self_attn.q_proj.weight"], expected)
    ids = run.train[0].token_ids
    with torch.no_grad():
        ours = peft_model(input_ids=torch.tensor([ids])).logits
        theirs = engine(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_checkpoint_holds_the_adapters_and_the_export_a_merged_model(lora_run) -> None:
    run, _, out = lora_run
    actor = run.roles.actor
    actor.save_checkpoint(str(out / "ckpt"))
    with safe_open(out / "ckpt" / "actor" / "model.safetensors", "pt") as saved:
        names = list(saved.keys())  # a safe_open handle is not iterable
    assert any(".lora_A." in name for name in names)
    final = out / "final"
    actor.export_model(str(final))
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    assert not (final / "adapter" / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    # The adapter on the untouched student is the trained student too (with gradient
    # checkpointing on, the spec's default, peft's own save used to write no tensor at all).
    assert run.spec.training.gradient_checkpointing
    base = AutoModelForCausalLM.from_pretrained(run.spec.student.model, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, final / "adapter").eval()
    ids = torch.tensor([run.train[0].token_ids])
    with torch.no_grad():
        trained = actor.model(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapted(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)


def test_merge_refuses_an_incomplete_adapter() -> None:
    named = [("base_model.model.l.base_layer.weight", torch.zeros(2, 2))]
    with pytest.raises(ValueError, match=r"incomplete LoRA layers .*\['l'\]"):
        list(merged_named_tensors(named, 1.0))
