"""bench/step.py and bench/vs_trl.py run end to end at tiny sizes, so they do not rot.

A couple of steps of a tiny demo (a few SFT steps per model, 4 prompts × 2 completions of ≤ 6
tokens), the real trainer, the real floor and, when TRL can be installed into its folder, the real
TRL trainers. The values are checked for consistency, not speed: wall times on a shared machine
say nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--train-size", "64", "--teacher-sft-steps", "3", "--student-sft-steps", "3",
    "--batch-size", "4", "--rollout-n", "2", "--ppo-mini-batch-size", "2",
    "--response-length", "6", "--steps", "2", "--warmup", "1", "--threads", "1",
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by both scripts: the second reuses the tiny demo models the first built."""
    return tmp_path_factory.mktemp("bench-demo")


def run_script(script: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *TINY, *args],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_step_breakdown_on_both_backends(demo_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    run_script("step.py", "--demo-out", str(demo_out), "--work", str(tmp_path), "--out", str(out))
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert set(runs) == {
        f"kl_{kl}/{runner}" for kl in ("on", "off") for runner in ("floor", "inprocess", "ray")
    }
    for key, run in runs.items():
        assert run["step_s"]["n"] == 2, key  # the warm-up step is not counted
        phases = sum(p["median"] for p in run["phases_s"].values())
        assert run["step_s"]["min"] > 0 and run["completions_per_s"] > 0
        if key.endswith("/floor"):
            assert phases == pytest.approx(run["step_s"]["median"], rel=0.05)
            continue
        floor = runs[f"{key.split('/')[0]}/floor"]
        assert 0 <= run["overhead_fraction"] < 1
        ratio = run["step_s"]["median"] / floor["step_s"]["median"]
        assert run["floor_ratio"] == pytest.approx(ratio, rel=1e-2)
        assert run["vs_floor_ms"]["generate"]["floor_ms"] > 0
    assert "teacher_logprob" in runs["kl_on/ray"]["phases_s"]
    assert "teacher_logprob" not in runs["kl_off/inprocess"]["phases_s"]
    assert "teacher_fwd" in runs["kl_on/floor"]["phases_s"]
    assert "teacher_fwd" not in runs["kl_off/floor"]["phases_s"]
    ours = [run for key, run in runs.items() if not key.endswith("/floor")]
    assert results["overhead_fraction"] == max(run["overhead_fraction"] for run in ours)
    assert results["floor_ratio"] == max(run["floor_ratio"] for run in ours)
    assert results["config"]["completions_per_step"] == 8
    assert results["machine"]["torch_threads_in_actors"] == 1


def test_vs_trl_same_work(demo_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Restored after the test: on sys.path, bench/ reaches every later test's subprocesses
    # through PYTHONPATH (torch inductor's ISA probe passes sys.path on), where a script's name
    # can shadow a module of the standard library.
    monkeypatch.syspath_prepend(REPO / "bench")
    import vs_trl

    trl_dir = REPO / "out" / "bench" / "trl"
    try:
        vs_trl.ensure_trl(trl_dir)
    except (subprocess.CalledProcessError, RuntimeError) as err:
        pytest.skip(f"TRL {vs_trl.TRL_VERSION} cannot be installed here: {err}")
    out = tmp_path / "vs_trl.json"
    run_script(
        "vs_trl.py", "--backends", "inprocess", "--demo-out", str(demo_out),
        "--work", str(tmp_path), "--trl-dir", str(trl_dir), "--out", str(out),
    )  # fmt: skip
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert set(runs) == {
        "kl_on/trl_distillation", "kl_on/ours_inprocess", "kl_off/trl_grpo", "kl_off/ours_inprocess"
    }  # fmt: skip
    for key, run in runs.items():
        assert run["step_s"]["n"] == 2, key
    ratio = runs["kl_on/ours_inprocess"]["completions_per_s"]
    ratio /= runs["kl_on/trl_distillation"]["completions_per_s"]
    assert results["speedup"] == pytest.approx(ratio, rel=1e-2)
    assert results["speedup_kl_off"] > 0
    assert results["machine"]["trl"] == vs_trl.TRL_VERSION
    assert runs["kl_on/trl_distillation"]["torch_threads"] == 1
    assert results["work"]["completions_per_step"] == 8
