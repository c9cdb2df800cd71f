"""verl V1 trainers that log A-GRAE's state every step and keep ``mu`` honest under dynamic sampling.

Registered with verl's ``register_trainer`` as ``agrae_sync`` and ``agrae_separate_async`` (select with
``trainer.v1.trainer_mode=agrae_sync``; our packaged configs do). They behave exactly like verl's ``sync``
and ``separate_async`` trainers, plus:

- **A-GRAE diagnostics** (:mod:`verl_agrae.diagnostics`) merged into the step's metrics, so they reach
  wandb / tensorboard / the file logger as ``agrae/...``: ``mu``, ``mu_batch``, ``suppression``,
  ``pos_to_neg_ratio``, group shares, mean |advantage| per success-rate bin, ``groups_dropped``.
- **mu before filtering.** DAPO's dynamic sampling (``algorithm.filter_groups``) drops every group whose
  filter metric is identical across its responses, i.e. the all-solved and all-failed groups (p in {0, 1}).
  The batch the estimator sees has lost exactly those, so its own mean success rate is biased towards 0.5.
  verl's replay buffer reports the dropped groups per step as ``{shared metric value: group count}``; this
  trainer turns them into success rates (the shared value itself, or ``1[value > success_threshold]`` when a
  threshold is set) and hands them to the estimator, which then uses the mean over all generated groups.
  Both values are logged: ``agrae/mu`` (used) and ``agrae/mu_batch`` (post-filter). Surplus mixed groups
  that the buffer generated beyond the batch and discarded are not counted: their rewards are never read.
- **Replay-buffer poll interval** ``trainer.v1.sampler.poll_interval`` (verl: fixed 2 s; ``cpu.yaml``: 0.2 s).
- **Reference policy on its own pool** (``ref_pool.nnodes`` and ``ref_pool.n_gpus_per_node`` > 0, with
  ``actor_rollout_ref.hybrid_engine=False`` so the reference runs as its own worker group): verl puts it on
  the training pool; this maps ``Role.RefPolicy`` to a separate ``ref_pool``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import trainer_separate_async as _separate_async
from verl.trainer.ppo.v1.replay_buffer import DAPO_FILTERED_REWARD_COUNTS_KEY
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_agrae.config import AgraeConfig
from verl_agrae.diagnostics import PREFIX, diagnostics_from_result
from verl_agrae.register import ESTIMATOR_NAME, groups_outside_batch, last_result

__all__ = ["VERL_MODE", "AgraeTrainerMixin", "AgraeSyncTrainer", "AgraeSeparateAsyncTrainer", "dropped_group_success"]

logger = logging.getLogger(__name__)

REF_POOL = "ref_pool"


def dropped_group_success(dropped: Mapping[Any, int] | None, success_threshold: float | None) -> list[float]:
    """Success rates of the groups dynamic sampling dropped, one entry per group.

    Args:
        dropped: verl's ``{shared filter-metric value: group count}`` for the step (None or empty: none).
        success_threshold: A-GRAE's ``success_threshold``; with it a value counts as success when above it,
            without it the value itself must be a success rate in [0, 1] (e.g. ``acc``).

    Raises:
        ValueError: a value outside [0, 1] with no threshold (e.g. filtering on DAPO's +-1 score).
    """
    out: list[float] = []
    for value, count in (dropped or {}).items():
        v = float(value)
        if success_threshold is not None:
            p = 1.0 if v > success_threshold else 0.0
        elif 0.0 <= v <= 1.0:
            p = v
        else:
            raise ValueError(
                f"dynamic sampling dropped groups whose filter metric is {v}, not a success rate in [0, 1]; "
                "filter on `acc` or set algorithm.agrae.success_threshold"
            )
        out.extend([p] * int(count))
    return out


#: Our trainer modes and the verl modes they extend.
VERL_MODE = {"agrae_sync": "sync", "agrae_separate_async": "separate_async"}


class AgraeTrainerMixin:
    """Adds A-GRAE metrics, pre-filter ``mu`` and an optional reference pool to a verl V1 trainer."""

    config: Any

    # verl's trainer base copies `trainer.v1.trainer_mode` into `self.trainer_mode`, then branches on
    # `== "sync"` (replay buffer class, dataloader refill, TransferQueue checkpointing) and reads its settings
    # from `trainer.v1.<mode>`. Under our mode names it would treat `agrae_sync` as an async mode and ignore
    # `trainer.v1.sync`; mapping the name on assignment makes each of our modes exactly the verl mode it extends.
    @property
    def trainer_mode(self) -> str:
        return self._verl_trainer_mode

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        self._verl_trainer_mode = VERL_MODE.get(value, value)

    def _build_replay_buffer(self):
        buffer = super()._build_replay_buffer()
        # verl's buffer checks for finished rollouts every 2 s (fixed in its constructor), so every sync step
        # waits ~1 s after generation ends, on average: a fifth of a tiny CPU step. `poll_interval` lets a
        # config shorten it (cpu.yaml does).
        interval = self.config.trainer.v1.sampler.get("poll_interval", None)
        if interval is not None:
            if float(interval) <= 0:
                raise ValueError(f"trainer.v1.sampler.poll_interval must be > 0, got {interval}")
            buffer.poll_interval = float(interval)
        return buffer

    def _compute_advantage(self, batch, metrics: dict):
        if self.config.algorithm.adv_estimator != ESTIMATOR_NAME:
            return super()._compute_advantage(batch, metrics)
        opts = AgraeConfig.from_algorithm(self.config.algorithm)
        outside = dropped_group_success(metrics.get(DAPO_FILTERED_REWARD_COUNTS_KEY), opts.success_threshold)
        before = last_result()
        with groups_outside_batch(outside):
            batch = super()._compute_advantage(batch, metrics)
        result = last_result()
        if result is None or result is before:
            raise RuntimeError("algorithm.adv_estimator=agrae but verl did not call the agrae estimator this step")
        metrics.update(diagnostics_from_result(result, alpha=opts.alpha))
        metrics[PREFIX + "groups_dropped"] = float(len(outside))
        return batch

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        pool = self.config.get(REF_POOL, None) or {}
        nnodes, per_node = int(pool.get("nnodes", 0) or 0), int(pool.get("n_gpus_per_node", 0) or 0)
        if nnodes <= 0 or per_node <= 0:
            return  # verl's fused layout
        if Role.RefPolicy not in self.role_worker_mapping:
            raise ValueError(
                "ref_pool is set but the reference policy is not a separate worker group: it needs a reference "
                "(KL loss or KL in reward) and actor_rollout_ref.hybrid_engine=False"
            )
        spec = dict(self.resource_pool_manager.resource_pool_spec)
        spec[REF_POOL] = [per_node] * nnodes
        self.mapping[Role.RefPolicy] = REF_POOL
        self.resource_pool_manager = type(self.resource_pool_manager)(resource_pool_spec=spec, mapping=self.mapping)
        logger.info("reference policy placed on its own pool: %s", spec[REF_POOL])


@register_trainer("agrae_sync")
class AgraeSyncTrainer(AgraeTrainerMixin, PPOTrainerSync):
    """verl's ``sync`` trainer with A-GRAE metrics and pre-filter ``mu``."""


class _LoggerWithoutFlush(logging.LoggerAdapter):
    """Drops ``print``'s ``flush=`` keyword, which ``logging`` rejects with a TypeError."""

    def log(self, level, msg, *args, flush=None, **kwargs):
        super().log(level, msg, *args, **kwargs)


# verl 0.9.1's PPOTrainerSeparateAsync._setup logs `logger.info(..., flush=True)` when
# actor_rollout_ref.hybrid_engine=False, which kills every separate_async run without hybrid replicas
# (the layout with rollout and training on disjoint pools).
if not isinstance(_separate_async.logger, logging.LoggerAdapter):
    _separate_async.logger = _LoggerWithoutFlush(_separate_async.logger, {})


@register_trainer("agrae_separate_async")
class AgraeSeparateAsyncTrainer(AgraeTrainerMixin, PPOTrainerSeparateAsync):
    """verl's ``separate_async`` trainer (rollout on its own pool) with A-GRAE metrics and pre-filter ``mu``."""
