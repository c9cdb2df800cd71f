"""verl's sync replay buffer with what DAPO + A-GRAE need from it: every generated group counted, and a cap.

verl 0.9.1's sync ``ReplayBuffer`` (``verl/trainer/ppo/v1/replay_buffer.py``) runs DAPO's dynamic sampling: it
evicts every finished group whose filter metric is the same for all its responses (all-solved / all-failed), asks
for two new prompts per evicted group, and once enough mixed groups are finished it lets the prompts still in
flight finish, selects the batch and discards the surplus mixed groups. Two things are missing for us:

- **Every generated group's success, read before verl clears it.** verl reports the evicted groups only as
  ``{shared metric value: count}`` and the surplus only as a count, so ``mu`` could not be the mean over all
  groups generated for the step: the surplus mixed groups (most numerous late in training, when mixed groups are
  rare) were never counted. :class:`AgraeReplayBuffer` reads the rewards of every group it evicts or discards
  (rm_scores and the reward function's ``reward_extra_info``), turns them into success rates with the project's
  one rule (:func:`~verl_agrae.advantage.success_of_responses`: ``acc`` when the reward function reports it) and
  hands them to the trainer with the step's metrics under :data:`GENERATED_GROUPS_KEY`.
- **A cap on generation.** verl V1 never reads ``algorithm.filter_groups.max_num_gen_batches`` (it warns that
  the key is ignored) and keeps refilling until the batch is full: late in training one step can consume most
  of the dataset. Here at most ``max_num_gen_batches x data.train_batch_size`` prompts are generated for a step.
  When the cap stops a needed refill, ``trainer.v1.sampler.on_generation_cap`` decides: ``error`` (default)
  stops the run with a message naming the numbers and the keys; ``train`` stops evicting, generates just the
  prompts the batch still lacks and trains on a full batch in which those groups may be all-solved or
  all-failed (their advantages are 0: they carry no gradient, only weight in a token-mean loss).

Only verl's sync buffer is adopted (our ``agrae_sync`` mode): the async buffer keeps surplus groups for later
steps, and a custom sampler owns its own semantics. Everything else is verl's code path, unchanged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
import transfer_queue as tq
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from verl_agrae.advantage import success_of_responses

__all__ = [
    "GENERATED_GROUPS_KEY",
    "ON_CAP_CHOICES",
    "AgraeReplayBuffer",
    "GenerationCapReached",
    "adopt",
    "group_success_from_rewards",
    "reward_acc",
]

logger = logging.getLogger(__name__)

#: Step-metrics key (non-scalar, removed by the trainer before logging) of
#: ``{"dropped": [p, ...], "surplus": [p, ...], "prompts": int, "cap_reached": bool}``.
GENERATED_GROUPS_KEY = "_agrae_generated_groups"
ON_CAP_CHOICES = ("error", "train")


class GenerationCapReached(RuntimeError):
    """Dynamic sampling could not fill a batch within ``algorithm.filter_groups.max_num_gen_batches``."""


def group_success_from_rewards(
    scores: Iterable[float], accs: Iterable[Any], success_threshold: float | None, what: str
) -> float:
    """Success rate of one group from its responses' scores and the reward function's ``acc`` values.

    Args:
        scores: each response's outcome score.
        accs: each response's ``acc`` (None where the reward function reported none).
        success_threshold: A-GRAE's ``success_threshold`` (used only without ``acc``).
        what: the group, for error messages.

    Raises:
        ValueError: some responses report ``acc`` and others do not, or the rule rejects the values.
    """
    scores_t = torch.tensor([float(s) for s in scores], dtype=torch.float64)
    accs = list(accs)
    have = [a is not None for a in accs]
    if any(have) and not all(have):
        raise ValueError(f"{what}: the reward function reported acc for some responses but not all")
    acc_t = torch.tensor([float(a) for a in accs], dtype=torch.float64) if all(have) and accs else None
    return float(success_of_responses(scores_t, acc_t, None, success_threshold, what=what).mean())


def reward_acc(extra_fields: Any) -> Any:
    """The reward function's ``acc`` in one trajectory's ``extra_fields`` (TransferQueue), or None."""
    data = getattr(extra_fields, "data", extra_fields)
    info = data.get("reward_extra_info", {}) if isinstance(data, dict) else {}
    return info.get("acc") if isinstance(info, dict) else None


class AgraeReplayBuffer(ReplayBuffer):
    """verl's sync :class:`ReplayBuffer` plus the success of every group it leaves out, and a generation cap.

    Made from verl's own instance by :func:`adopt` (verl builds the buffer; we add state and these overrides).
    """

    _agrae_threshold: float | None
    _agrae_max_prompts: int | None
    _agrae_on_cap: str

    def _agrae_reset(self, global_steps: int) -> None:
        self._agrae_step = global_steps
        self._agrae_dropped: list[float] = []
        self._agrae_surplus: list[float] = []
        self._agrae_refilled = 0
        self._agrae_cap_reached = False
        self._agrae_keep_all = False
        self._agrae_batch_size = 0

    # -- reading groups before verl clears them ---------------------------------------------------------------

    def _agrae_group_success(self, partition_id: str, uids: set[str]) -> list[float]:
        if not uids:
            return []
        keys = [key for key in self.partitions[partition_id] if key.split("_")[0] in uids]
        by_uid: dict[str, tuple[list[float], list[Any]]] = {uid: ([], []) for uid in uids}
        if keys:
            data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["rm_scores", "extra_fields"])
            for key, score, extra in zip(keys, data["rm_scores"], data["extra_fields"], strict=True):
                scores, accs = by_uid[key.split("_")[0]]
                scores.append(float(score.sum().item()))
                accs.append(reward_acc(extra))
        return [
            group_success_from_rewards(scores, accs, self._agrae_threshold, what=f"group {uid}")
            for uid, (scores, accs) in sorted(by_uid.items())
            if scores
        ]

    def _evict_terminal_groups(self, global_steps, partition_id, eviction_reasons):
        _stale, dapo_uids, failed_uids, _counts = eviction_reasons
        if partition_id != "val" and dapo_uids:
            # Failed groups have no rewards to read; a group both filtered and failed is not counted.
            self._agrae_dropped.extend(self._agrae_group_success(partition_id, set(dapo_uids) - set(failed_uids)))
        return super()._evict_terminal_groups(global_steps, partition_id, eviction_reasons)

    def _select_prompt_uids(self, partition_id, sampleable_keys, batch_size):
        selected, snapshot, steps = super()._select_prompt_uids(partition_id, sampleable_keys, batch_size)
        if partition_id != "val" and self.filter_groups_metric is not None:
            # verl clears exactly these right after selecting (sync mode keeps no buffer between steps).
            surplus = set(sampleable_keys) - set(selected)
            self._agrae_surplus.extend(self._agrae_group_success(partition_id, surplus))
        return selected, snapshot, steps

    # -- the generation cap -----------------------------------------------------------------------------------

    def _terminal_eviction_reasons(self, global_steps, partition_id):
        reasons = super()._terminal_eviction_reasons(global_steps, partition_id)
        if partition_id == "val":
            return reasons
        stale, _dapo, failed, _counts = reasons
        if self._agrae_keep_all:
            # Past the cap with on_generation_cap=train: filtered groups stay and fill the batch.
            return stale, set(), failed, Counter()
        if self._agrae_cap_reached and self._agrae_on_cap == "error":
            inflight = len(self.pending_keys[partition_id]) + len(self.running_keys[partition_id])
            have = len(self._sampleable_terminal_keys(partition_id, reasons))
            if inflight == 0 and have < self._agrae_batch_size:
                raise GenerationCapReached(
                    self._agrae_cap_message()
                    + f"; the batch has {have} of {self._agrae_batch_size} groups with mixed outcomes and nothing is "
                    "in flight. The data may be too easy or too hard for the policy now. Raise "
                    "algorithm.filter_groups.max_num_gen_batches (<= 0: no cap), or set "
                    "trainer.v1.sampler.on_generation_cap=train to fill the batch with filtered groups."
                )
        return reasons

    def _agrae_refill(self, num_prompts: int) -> int:
        cap = self._agrae_max_prompts
        if cap is None:
            return self._agrae_verl_refill(num_prompts)
        count = min(num_prompts, max(0, cap - self.train_batch_size - self._agrae_refilled))
        if count < num_prompts and not self._agrae_cap_reached:
            self._agrae_cap_reached = True
            if self._agrae_on_cap == "train":
                logger.warning(
                    "%s; on_generation_cap=train: filtered groups now fill the batch", self._agrae_cap_message()
                )
                self._agrae_keep_all = True
        if self._agrae_keep_all:
            count = max(count, self._agrae_missing())
        if count <= 0:
            return 0
        self._agrae_refilled += count
        return self._agrae_verl_refill(count)

    def _agrae_missing(self) -> int:
        # Groups the batch still lacks once everything in flight is in (evicted groups are gone already).
        finished = len(self.finished_keys["train"] - self.failure_keys["train"])
        inflight = len(self.pending_keys["train"]) + len(self.running_keys["train"])
        return max(0, self._agrae_batch_size - finished - inflight)

    def _agrae_cap_message(self) -> str:
        return (
            f"dynamic sampling reached its generation cap at step {self._agrae_step}: "
            f"{self.train_batch_size + self._agrae_refilled} prompts generated, the cap is "
            f"algorithm.filter_groups.max_num_gen_batches x data.train_batch_size = {self._agrae_max_prompts}; "
            f"{len(self._agrae_dropped)} groups were all-solved or all-failed"
        )

    # -- one step ---------------------------------------------------------------------------------------------

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        if partition_id == "val":
            return super().sample(global_steps, partition_id, batch_size)
        if global_steps != self._agrae_step:
            self._agrae_reset(global_steps)
        self._agrae_batch_size = batch_size
        batch, metrics = super().sample(global_steps, partition_id, batch_size)
        metrics[GENERATED_GROUPS_KEY] = {
            "dropped": list(self._agrae_dropped),
            "surplus": list(self._agrae_surplus),
            "prompts": self.train_batch_size + self._agrae_refilled,
            "cap_reached": self._agrae_cap_reached,
        }
        self._agrae_dropped, self._agrae_surplus = [], []
        return batch, metrics


def adopt(
    buffer: Any, *, success_threshold: float | None, max_num_gen_batches: int | None, on_cap: str
) -> AgraeReplayBuffer | Any:
    """Turn verl's sync replay buffer into an :class:`AgraeReplayBuffer`; any other buffer is returned unchanged.

    Args:
        buffer: what verl's ``_build_replay_buffer`` built.
        success_threshold: A-GRAE's ``success_threshold`` (the success rule without ``acc``).
        max_num_gen_batches: ``algorithm.filter_groups.max_num_gen_batches``; None or <= 0: no cap.
        on_cap: ``trainer.v1.sampler.on_generation_cap``, ``error`` or ``train``.

    Raises:
        ValueError: ``on_cap`` is not one of :data:`ON_CAP_CHOICES`.
    """
    if on_cap not in ON_CAP_CHOICES:
        raise ValueError(f"trainer.v1.sampler.on_generation_cap must be one of {ON_CAP_CHOICES}, got {on_cap!r}")
    if type(buffer) is not ReplayBuffer:
        return buffer
    buffer.__class__ = AgraeReplayBuffer
    buffer._agrae_threshold = success_threshold
    cap = int(max_num_gen_batches or 0)
    buffer._agrae_max_prompts = cap * buffer.train_batch_size if cap > 0 and buffer.filter_groups_metric else None
    buffer._agrae_on_cap = on_cap
    buffer._agrae_verl_refill = buffer.refill_fn
    buffer.refill_fn = buffer._agrae_refill
    buffer._agrae_reset(global_steps=-1)
    return buffer
