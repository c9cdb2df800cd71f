"""The six packaged training configs (GRPO, Dr.GRPO, DAPO, each +- A-GRAE) compose on verl's `ppo_trainer`, mean what
the papers say (independent expectations below, from verl's documented keys and docs/agrae.md), pass verl's own
validator, and refuse A-GRAE on DAPO's +-1 scores without a success threshold before Ray starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from verl_agrae.trainer.main import compose_config

ROOT = Path(__file__).resolve().parents[1]

BASES = ["grpo", "drgrpo", "dapo"]
# Small, GPU-free sizes so verl's validator has something consistent to check.
SIZES = [
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "data.max_response_length=1024",
    "trainer.n_gpus_per_node=1",
]


def _compose(name, *extra):
    return compose_config(name, [*SIZES, *extra])


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("agrae", [False, True])
def test_semantics(base, agrae):
    name = f"{base}_agrae" if agrae else base
    cfg = _compose(name)
    actor = cfg.actor_rollout_ref.actor
    # Plain methods run `agrae` with both terms off (equal to verl's `grpo`, tests/test_advantage_on_cpu.py).
    assert cfg.algorithm.adv_estimator == "agrae"
    assert cfg.algorithm.agrae.difficulty_shift is agrae and cfg.algorithm.agrae.suppress_correct is agrae
    assert cfg.trainer.v1.trainer_mode == "agrae_sync"
    assert cfg.reward.custom_reward_function.path == "pkg://verl_agrae.reward"
    if base == "grpo":
        assert cfg.algorithm.norm_adv_by_std_in_grpo is True
        assert actor.use_kl_loss is True
    if base == "drgrpo":  # the authors' "Dr.GRPO" kept std normalisation: this one does not
        assert cfg.algorithm.norm_adv_by_std_in_grpo is False
        assert actor.loss_agg_mode == "seq-mean-token-sum-norm"
        assert actor.loss_scale_factor == 1024  # a constant: data.max_response_length
        assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False
    if base == "dapo":  # the authors' "DAPO" had neither dynamic sampling nor overlong shaping, and kept KL
        assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0)
        assert actor.loss_agg_mode == "token-mean"
        assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False
        assert cfg.algorithm.filter_groups.enable is True and cfg.algorithm.filter_groups.metric == "acc"
        assert cfg.reward.reward_manager.name == "dapo"
        assert cfg.reward.reward_kwargs.overlong_buffer_cfg.enable is True
        assert cfg.reward.reward_kwargs.max_resp_len == 1024  # follows data.max_response_length
        assert cfg.reward.custom_reward_function.reward_kwargs.dapo is True
    assert cfg.algorithm.agrae.alpha == 1.0
    assert cfg.algorithm.agrae.success_threshold == (0.0 if base == "dapo" else None)


@pytest.mark.parametrize("name", BASES + [f"{b}_agrae" for b in BASES] + ["cpu_demo_grpo"])
def test_passes_verl_validator_and_our_preflight(name):
    from verl_agrae.trainer.checks import check_estimator

    spec = importlib.util.spec_from_file_location("compose_config", ROOT / "examples" / "compose_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.compose_and_validate(name, SIZES)
    check_estimator(cfg)


def test_dapo_agrae_without_threshold_is_refused_naming_the_key():
    from verl_agrae.trainer.checks import PreflightError, check_estimator

    cfg = _compose("dapo_agrae", "algorithm.agrae.success_threshold=null")
    with pytest.raises(PreflightError, match="algorithm.agrae.success_threshold"):
        check_estimator(cfg)


def test_bad_alpha_is_refused_naming_the_key():
    from verl_agrae.trainer.checks import PreflightError, check_estimator

    with pytest.raises(PreflightError, match="algorithm.agrae.alpha"):
        check_estimator(_compose("grpo_agrae", "algorithm.agrae.alpha=0"))
