#!/usr/bin/env bash
# The trainer at the seed's real shapes on one GPU: random-initialised Qwen2.5-1.5B (student,
# actor and HF rollout engine) and Qwen2.5-7B (teacher), their configurations written below
# (nothing is downloaded), 3 steps of 16 prompts × 8 responses of 4,096 sampled tokens (a random
# model never samples EOS, so every response is the full length). Each step runs the driver's
# phases on the roles of roles/trainer.py and roles/rollout_hf.py (in-process: one GPU is one rank
# of every role); grading is replaced by random 0/1 scores (math-verify is not needed). If a step
# runs out of memory the prompts per step are halved and the step retried; the size that ran is
# reported. Prints each role's resident weights, then per step: time by phase, tokens/s, the GPU
# peak during each phase (all roles share the GPU), each phase's working set (its peak above what
# was held when it began) and per role: resident weights + the largest working set of its phases.
#
#   scripts/gpu_check.sh                      # the real shapes (needs a GPU, ~15 GiB of disk)
#   GPU_CHECK_TINY=1 scripts/gpu_check.sh     # the same code at toy shapes on CPU (seconds)
#   PYTHON=/path/to/python STEPS=3 PROMPTS=16 RESPONSE=4096 scripts/gpu_check.sh
#
# Needs torch, transformers and pydantic, and this checkout (no Ray, no vLLM, no internet).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/operator:$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
exec "${PYTHON:-python}" - <<'PY'
import gc, json, os, random, tempfile, time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config

from distill_api import load_job
from distill_trainer import tiny
from distill_trainer.algorithm import apply_kl_to_advantages, compute_base_advantages
from distill_trainer.batch import last_token_rewards
from distill_trainer.config import RunOptions, role_configs
from distill_trainer.roles import SamplingParams
from distill_trainer.roles.rollout_hf import HFRolloutEngine
from distill_trainer.roles.trainer import HFActor, HFTeacher

QWEN25_1_5B = dict(  # Qwen/Qwen2.5-1.5B-Instruct config.json
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
    tie_word_embeddings=True, vocab_size=151936, hidden_act="silu", attention_dropout=0.0,
)
QWEN25_7B = dict(  # Qwen/Qwen2.5-7B-Instruct config.json
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
    tie_word_embeddings=False, vocab_size=152064, hidden_act="silu", attention_dropout=0.0,
)
TINY = os.environ.get("GPU_CHECK_TINY") == "1"
if TINY:  # toy layers, the real vocabularies (the chunked logprobs are what scale with V)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
    QWEN25_1_5B, QWEN25_7B = {**QWEN25_1_5B, **small}, {**QWEN25_7B, **small}
STEPS = int(os.environ.get("STEPS", 3))
PROMPTS = int(os.environ.get("PROMPTS", 2 if TINY else 16))
RESPONSE = int(os.environ.get("RESPONSE", 16 if TINY else 4096))
N = int(os.environ.get("ROLLOUT_N", 8))
DEVICE = "cuda" if torch.cuda.is_available() and not TINY else "cpu"
GiB = 2**30
print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {DEVICE}"
      + (f" ({torch.cuda.get_device_name()})" if DEVICE == "cuda" else ""))

work = Path(os.environ.get("GPU_CHECK_DIR") or tempfile.mkdtemp(prefix="gpu_check_"))
tokenizer = tiny.build_tokenizer()  # out-of-vocabulary samples decode to nothing: fine here
ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
           eos_token_id=tokenizer.eos_token_id)


def build(name, shape):
    path = work / name
    if not (path / "config.json").exists():
        started = time.perf_counter()
        with torch.device(DEVICE):  # random init on the GPU: seconds, not minutes
            model = AutoModelForCausalLM.from_config(Qwen2Config(**shape, **ids),
                                                     dtype=torch.bfloat16)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        del model
        gc.collect()
        torch.cuda.empty_cache() if DEVICE == "cuda" else None
        print(f"built {name} in {time.perf_counter() - started:.0f} s")
    return str(path)


student, teacher = build("student-qwen2.5-1.5b", QWEN25_1_5B), build("teacher-qwen2.5-7b", QWEN25_7B)
job = load_job({
    "apiVersion": "distill.dev/v1alpha1", "kind": "DistillJob", "metadata": {"name": "gpu-check"},
    "spec": {
        "student": {"model": student}, "teacher": {"model": teacher},
        "algorithm": {"advEstimator": "grpo", "rolloutN": N, "klPenaltyCoef": 0.1},
        "training": {"batchSize": PROMPTS, "ppoMiniBatchSize": PROMPTS, "totalSteps": STEPS},
        "rollout": {"temperature": 1.0, "maxPromptLength": 1024, "maxResponseLength": RESPONSE},
        "data": {"train": "unused.parquet"},
    },
})
spec = job.spec
configs = role_configs(spec, RunOptions(backend="inprocess", device=DEVICE))
resident = {}


def allocated():
    return torch.cuda.memory_allocated() / GiB if DEVICE == "cuda" else 0.0


def build_role(name, make):
    before = allocated()
    role = make()
    resident[name] = allocated() - before
    return role


rollout = build_role("rollout", lambda: HFRolloutEngine(configs.rollout))
actor = build_role("actor", lambda: HFActor(configs.actor))
teacher_role = build_role("teacher", lambda: HFTeacher(configs.teacher))
print("resident weights (GiB):", {k: round(v, 2) for k, v in resident.items()})

rng = random.Random(0)
question = "Solve for x: " + " + ".join(str(rng.randint(10, 99)) for _ in range(60)) + " = x."
text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                     add_generation_prompt=True, tokenize=False)
prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
sampling = SamplingParams(max_new_tokens=RESPONSE, temperature=1.0)
PHASE_ROLE = {"generate": "rollout", "old_logprob": "actor", "teacher_logprob": "teacher",
              "update_actor": "actor", "weight_sync": "actor"}


def step(prompts):
    times, peaks = {}, {}

    def phase(name, fn):
        if DEVICE == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        held, started = allocated(), time.perf_counter()
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / GiB
            peaks[name] = (peak, peak - held)  # all roles together; this phase's working set
        times[name] = time.perf_counter() - started
        return out

    rollouts = phase("generate", lambda: rollout.generate([prompt] * prompts, N, sampling))
    batch = rollouts.to_batch(N)
    batch.scores = torch.tensor([float(rng.random() < 0.3) for _ in range(batch.size)])
    batch.step_rewards = last_token_rewards(batch.scores, batch.response_mask)
    batch.old_logprobs = phase("old_logprob", lambda: actor.compute_logprobs(batch)).logprobs
    batch.teacher_logprobs = phase("teacher_logprob", lambda: teacher_role.compute_logprobs(batch))
    batch.advantages, _ = compute_base_advantages(
        spec.algorithm.adv_estimator, response_mask=batch.response_mask, scores=batch.scores,
        step_rewards=batch.step_rewards, token_rewards=batch.step_rewards, values=None,
        group_ids=batch.group_ids, gamma=1.0, lam=1.0, norm_by_std=True)
    batch.advantages, _ = apply_kl_to_advantages(
        batch.advantages, batch.old_logprobs, batch.teacher_logprobs, batch.response_mask,
        spec.algorithm.kl_penalty_coef, spec.algorithm.kl_estimator)
    metrics = phase("update_actor", lambda: actor.update(batch))
    phase("weight_sync", lambda: rollout.load_weights(actor.get_weights()))
    tokens = int(batch.attention_mask.sum())
    return times, peaks, tokens, batch.size, int(batch.response_mask.sum(-1).max()), metrics


prompts, results = PROMPTS, []
while len(results) < STEPS:
    try:
        times, peaks, tokens, rows, longest, metrics = step(prompts)
    except torch.OutOfMemoryError as err:
        gc.collect(); torch.cuda.empty_cache()
        if prompts == 1:
            raise
        print(f"out of memory at {prompts} prompts × {N} ({str(err).splitlines()[0]}); halving")
        prompts //= 2
        continue
    total = sum(times.values())
    role_peak = {}  # the role's resident weights + the largest working set of its phases
    for name, (_, working) in peaks.items():
        role = PHASE_ROLE[name]
        role_peak[role] = max(role_peak.get(role, 0.0), resident[role] + working)
    results.append({
        "step": len(results) + 1, "rows": f"{prompts} x {N}", "longest_response": longest,
        "tokens": tokens, "step_s": round(total, 1), "tokens_per_s": round(tokens / total),
        "phase_s": {k: round(v, 1) for k, v in times.items()},
        "gpu_peak_gib_by_phase": {k: round(v[0], 1) for k, v in peaks.items()},
        "working_gib_by_phase": {k: round(v[1], 1) for k, v in peaks.items()},
        "peak_gib_by_role": {k: round(v, 1) for k, v in role_peak.items()},
        "actor/grad_norm": round(metrics["actor/grad_norm"], 4),
    })
    print(json.dumps(results[-1]), flush=True)
print(f"ran {STEPS} steps at {prompts} prompts × {N} responses (asked for {PROMPTS} × {N}), "
      f"responses up to {RESPONSE} tokens, micro-batch budget "
      f"{spec.training.max_tokens_per_micro_batch} tokens, gradient checkpointing "
      f"{spec.training.gradient_checkpointing}")
PY
