"""The rollout pools split into whole replicas (checked before Ray starts), and vLLM's settings on the CPU."""

from __future__ import annotations

import importlib.util

import pytest
from omegaconf import OmegaConf


def _config(**keys):
    config = OmegaConf.create({})
    for key, value in keys.items():
        OmegaConf.update(config, key.replace("__", "."), value, force_add=True)
    return config


@pytest.mark.parametrize(
    ("keys", "replicas"),
    [
        ({"trainer__nnodes": 1, "trainer__n_gpus_per_node": 8}, 4),
        ({"trainer__nnodes": 2, "trainer__n_gpus_per_node": 8}, 8),
        ({"trainer__nnodes": 1, "trainer__n_gpus_per_node": 2}, 1),
        # separate_async: the actor's pool serves too (hybrid replicas), and the rollout's own pool
        (
            {
                "trainer__nnodes": 1,
                "trainer__n_gpus_per_node": 4,
                "trainer__v1__trainer_mode": "agrae_separate_async",
                "actor_rollout_ref__rollout__nnodes": 1,
                "actor_rollout_ref__rollout__n_gpus_per_node": 2,
            },
            3,
        ),
        # ... and only the rollout's pool without hybrid replicas
        (
            {
                "trainer__nnodes": 1,
                "trainer__n_gpus_per_node": 3,
                "trainer__v1__trainer_mode": "separate_async",
                "actor_rollout_ref__hybrid_engine": False,
                "actor_rollout_ref__rollout__nnodes": 2,
                "actor_rollout_ref__rollout__n_gpus_per_node": 2,
            },
            2,
        ),
    ],
)
def test_replicas_are_counted_per_pool(keys, replicas):
    from verl_agrae.trainer.checks import check_rollout_parallelism

    config = _config(actor_rollout_ref__rollout__tensor_model_parallel_size=2, **keys)
    assert check_rollout_parallelism(config) == replicas


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        # verl's default tensor parallel 2 on one GPU: 1 // 2 = 0 replicas (what gpu_smoke once did)
        ({"trainer__nnodes": 1, "trainer__n_gpus_per_node": 1}, "cannot hold one rollout replica"),
        ({"trainer__nnodes": 1, "trainer__n_gpus_per_node": 3}, "not a multiple"),
        (
            {
                "trainer__nnodes": 1,
                "trainer__n_gpus_per_node": 2,
                "trainer__v1__trainer_mode": "agrae_separate_async",
                "actor_rollout_ref__rollout__nnodes": 0,
                "actor_rollout_ref__rollout__n_gpus_per_node": 2,
            },
            "actor_rollout_ref.rollout.nnodes=0",
        ),
        (
            {"trainer__nnodes": 1, "trainer__n_gpus_per_node": 4, "actor_rollout_ref__rollout__data_parallel_size": 0},
            "data_parallel_size=0",
        ),
    ],
)
def test_pools_without_whole_replicas_are_refused_naming_the_keys(keys, message):
    from verl_agrae.trainer.checks import PreflightError, check_rollout_parallelism

    config = _config(actor_rollout_ref__rollout__tensor_model_parallel_size=2, **keys)
    with pytest.raises(PreflightError, match=message) as err:
        check_rollout_parallelism(config)
    assert "actor_rollout_ref.rollout" in str(err.value)


def test_the_gpu_smoke_run_gets_one_replica_and_tensor_parallel_2_is_refused(tmp_path):
    """The exact argument list gpu_smoke passes is prepared (not only composed); verl's default TP fails fast."""
    from verl_agrae.testing.gpu_smoke import smoke_argv
    from verl_agrae.trainer.checks import check_rollout_parallelism
    from verl_agrae.trainer.main import TrainingSetupError, compose_config, prepare

    argv = smoke_argv(tmp_path, "hf", 2, "cpu")
    overrides = argv[2:]
    config, _, _ = prepare(compose_config(argv[1], overrides), overrides)
    assert check_rollout_parallelism(config) == 1
    bad = [*overrides, "actor_rollout_ref.rollout.tensor_model_parallel_size=2"]
    with pytest.raises(TrainingSetupError, match="tensor_model_parallel_size=2"):
        prepare(compose_config(argv[1], bad), bad)


@pytest.fixture()
def composed():
    from verl_agrae.trainer.main import compose_config

    return compose_config("grpo_agrae", ["trainer.device=cpu"])


def test_vllm_on_the_cpu_needs_vllm_installed(composed, monkeypatch):
    from verl_agrae.trainer import cpu_overrides

    monkeypatch.setattr(cpu_overrides.importlib.util, "find_spec", lambda name: None)
    OmegaConf.update(composed, "actor_rollout_ref.rollout.name", "vllm")
    with pytest.raises(cpu_overrides.CpuSettingConflict, match="vLLM's CPU build"):
        cpu_overrides.apply_cpu_settings(composed, ["actor_rollout_ref.rollout.name=vllm"])


def test_vllm_on_the_cpu_gets_its_settings_and_refuses_sleep_mode(composed, monkeypatch):
    from verl_agrae.trainer import cpu_overrides

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(cpu_overrides.importlib.util, "find_spec", lambda name: name == "vllm" or real_find_spec(name))
    # The packaged config says vllm (for GPUs); without an explicit choice the CPU run gets `hf`.
    config = composed.copy()
    cpu_overrides.apply_cpu_settings(config, [])
    assert config.actor_rollout_ref.rollout.name == "hf"

    config = composed.copy()
    OmegaConf.update(config, "actor_rollout_ref.rollout.name", "vllm")
    changed = cpu_overrides.apply_cpu_settings(config, ["actor_rollout_ref.rollout.name=vllm"])
    rollout = config.actor_rollout_ref.rollout
    assert rollout.name == "vllm" and rollout.enable_sleep_mode is False and rollout.free_cache_engine is False
    budget = rollout.engine_kwargs.vllm.kv_cache_memory_bytes
    assert (
        0 < budget <= cpu_overrides.VLLM_KV_CACHE_BOUNDS_GIB[1] * 2**30
        and changed["actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes"] == budget
    )

    config = composed.copy()
    OmegaConf.update(config, "actor_rollout_ref.rollout.name", "vllm")
    OmegaConf.update(config, "actor_rollout_ref.rollout.enable_sleep_mode", True, force_add=True)
    with pytest.raises(cpu_overrides.CpuSettingConflict, match="enable_sleep_mode=True cannot run on the CPU"):
        cpu_overrides.apply_cpu_settings(
            config, ["actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.enable_sleep_mode=True"]
        )

    with pytest.raises(cpu_overrides.CpuSettingConflict, match="needs a GPU"):
        config = composed.copy()
        OmegaConf.update(config, "actor_rollout_ref.rollout.name", "sglang")
        cpu_overrides.apply_cpu_settings(config, ["actor_rollout_ref.rollout.name=sglang"])


def test_cpu_workers_keep_vllm_weights_live():
    from verl_agrae.integration.vllm_plugin import LIVE_WEIGHTS_ENV
    from verl_agrae.trainer.cpu_overrides import cpu_worker_env

    assert cpu_worker_env()[LIVE_WEIGHTS_ENV] == "1"


def test_vllm_cpu_kv_cache_budget_is_a_share_of_available_memory_within_bounds():
    from verl_agrae.trainer import cpu_overrides
    from verl_agrae.vllm_memory import GiB, cpu_kv_cache_bytes

    share, bounds = cpu_overrides.VLLM_KV_CACHE_SHARE, cpu_overrides.VLLM_KV_CACHE_BOUNDS_GIB
    assert (share, bounds) == (0.2, (0.0, 4.0))
    assert cpu_kv_cache_bytes(share, bounds, available_bytes=10 * GiB) == 2 * GiB
    assert cpu_kv_cache_bytes(share, bounds, available_bytes=40 * GiB) == 4 * GiB  # capped
    assert cpu_kv_cache_bytes(0.25, (1.0, 32.0), available_bytes=2 * GiB) == 1 * GiB  # raised to the floor
