"""scripts/gpu_smoke.sh on a machine without a GPU, and the GPU run it would start, prepared on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def test_refuses_clearly_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = subprocess.run(
        [sys.executable, "-m", "verl_agrae.testing.gpu_smoke"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2 and "no CUDA GPU" in out.stdout


def test_the_gpu_run_composes_and_passes_the_preflight_checks(tiny_model_dir, tmp_path, capsys):
    """The exact argument list gpu_smoke passes, with --print-config: verl's GPU path, vLLM rollout."""
    from verl_agrae.data.arithmetic import write_arithmetic_dataset
    from verl_agrae.testing.tiny_run import tiny_run_argv
    from verl_agrae.trainer.main import main

    write_arithmetic_dataset(tmp_path / "data", n_train=8, n_val=4, seed=0)
    argv = tiny_run_argv(
        "grpo_agrae",
        tiny_model_dir,
        tmp_path / "data",
        tmp_path / "run",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        steps=2,
        device="cuda",
    )
    assert main([*argv, "--print-config"]) == 0
    config = OmegaConf.create(capsys.readouterr().out)
    assert config.trainer.device == "cuda" and config.actor_rollout_ref.rollout.name == "vllm"
    assert config.algorithm.adv_estimator == "agrae" and config.trainer.v1.trainer_mode == "agrae_sync"
    # No CPU setting leaked into the GPU run.
    assert config.actor_rollout_ref.actor.strategy != "cpu" and "VERL_PLATFORM" not in str(config.ray_kwargs)
