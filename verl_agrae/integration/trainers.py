"""verl V1 trainers that log A-GRAE's state every step and keep ``mu`` honest under dynamic sampling.

Registered with verl's ``register_trainer`` as ``agrae_sync`` and ``agrae_separate_async`` (select with
``trainer.v1.trainer_mode=agrae_sync``; our packaged configs do). They behave exactly like verl's ``sync``
and ``separate_async`` trainers, plus:

- **A-GRAE diagnostics** (:mod:`verl_agrae.diagnostics`) merged into the step's metrics, so they reach
  wandb / tensorboard / the file logger as ``agrae/...``: ``mu``, ``mu_batch``, ``suppression``,
  ``pos_to_neg_ratio``, group shares, mean |advantage| per success-rate bin, ``groups_dropped``. The packaged
  plain-method configs (``grpo``, ``drgrpo``, ``dapo``) run ``agrae`` with both terms off, which equals verl's
  ``grpo`` exactly, so comparison runs get the same curves from this one path.
- **mu over every generated group.** DAPO's dynamic sampling (``algorithm.filter_groups``) drops every group
  whose filter metric is identical across its responses (the all-solved and all-failed groups), and in sync mode
  discards the surplus mixed groups that finished beyond the batch; the batch the estimator sees has lost both.
  Our replay buffer (:mod:`verl_agrae.integration.replay_buffer`) reads the success rate of each of those groups
  before verl clears it; this trainer hands them to the estimator in the step's
  :class:`~verl_agrae.integration.estimator.AgraeStep`, so ``mu`` is the mean over all groups generated for the
  step. Logged: ``agrae/mu`` (used), ``agrae/mu_batch`` (the batch alone), ``agrae/groups_dropped``,
  ``agrae/groups_surplus``, ``agrae/prompts_generated``, ``agrae/generation_cap_reached``. Where verl's own buffer
  runs (``agrae_separate_async``: its async buffer keeps the surplus for later steps), the dropped groups come
  from verl's ``{shared metric value: count}`` report instead.
- **One success rule.** When the reward function reports ``acc``, a response's success is its ``acc``, in the
  batch (read from the rows' ``reward_extra_info``) and in every left-out group alike; otherwise the reward
  itself or ``algorithm.agrae.success_threshold`` (:func:`verl_agrae.advantage.success_of_responses`).
- **A generation cap for dynamic sampling** (``algorithm.filter_groups.max_num_gen_batches``, which verl V1
  ignores; ``trainer.v1.sampler.on_generation_cap``): see :mod:`verl_agrae.integration.replay_buffer`.
- **Per-step records** (``run.record_advantages``; ``VERL_AGRAE_RECORD_DIR`` in the TaskRunner's environment):
  the estimator's inputs and outputs of step ``k`` in ``step-0000k.pt``, for tests and offline analysis.
- **Metrics of a checkpointed step survive a crash.** verl saves a step's checkpoint before it logs the step's
  metrics (and before it syncs weights to the rollout servers); a crash in between left a step that resume
  skips (its checkpoint exists) with no metrics. Right before each checkpoint, the metrics the step has so far
  are appended to ``checkpointed_metrics.jsonl`` next to verl's file-logger output (``VERL_FILE_LOGGER_PATH``),
  which ``verl-agrae train`` merges under verl's own rows.
- **A dead rollout server is named.** When a rollout server dies, its requests fail and verl's sync buffer raises
  "selected terminal groups with no materializable trajectories" (suggesting ``sync_refill_failed_groups``); the
  mixin then asks each rollout server actor whether it is alive and raises Ray's error for the dead one, which
  ``verl-agrae train`` turns into the role ("rollout server (`hf` backend) [HFRolloutServer]").
- **Save and stop on request** (:mod:`verl_agrae.trainer.stop_request`): after every step, if the file named by
  ``AGRAE_STOP_FILE`` exists, the step is checkpointed (unless verl just saved it), the step's metrics are logged as
  usual, and the training loop ends; ``<stop file>.saved`` records the step. ``slurm/train.sbatch`` uses it to save
  before SLURM's time limit and requeue, losing at most the step in progress.
- **Replay-buffer poll interval** ``trainer.v1.sampler.poll_interval`` (verl: fixed 2 s; ``cpu.yaml``: 0.2 s).
- **Reference policy on its own pool** (``ref_pool.nnodes`` and ``ref_pool.n_gpus_per_node`` > 0, with
  ``actor_rollout_ref.hybrid_engine=False`` so the reference runs as its own worker group): verl puts it on
  the training pool; this maps ``Role.RefPolicy`` to a separate ``ref_pool``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import transfer_queue as tq
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.replay_buffer import DAPO_FILTERED_REWARD_COUNTS_KEY
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_agrae.advantage import AgraeResult
from verl_agrae.atomic import atomic_target
from verl_agrae.config import AgraeConfig
from verl_agrae.diagnostics import PREFIX, diagnostics_from_result
from verl_agrae.integration.estimator import ESTIMATOR_NAME, AgraeStep, bind_step
from verl_agrae.integration.replay_buffer import GENERATED_GROUPS_KEY, adopt, reward_acc
from verl_agrae.trainer import stop_request
from verl_agrae.trainer.failures import worker_layout_note
from verl_agrae.trainer.run_dir import CHECKPOINTED_METRICS_FILE, RECORD_DIR_ENV

__all__ = [
    "RECORD_DIR_ENV",
    "VERL_MODE",
    "AgraeSeparateAsyncTrainer",
    "AgraeSyncTrainer",
    "AgraeTrainerMixin",
    "register_trainers",
    "step_record",
]

logger = logging.getLogger(__name__)

REF_POOL = "ref_pool"
#: verl's sync replay buffer, when every selected group's rollouts failed (replay_buffer.py, sample()).
NO_TRAJECTORIES = "selected terminal groups with no materializable trajectories"
#: Our trainer modes and the verl modes they extend.
VERL_MODE = {"agrae_sync": "sync", "agrae_separate_async": "separate_async"}


def _cap_is_honoured(record: logging.LogRecord) -> bool:
    if "max_num_gen_batches" in record.getMessage() and "is ignored" in record.getMessage():
        logger.info("algorithm.filter_groups.max_num_gen_batches is honoured by verl-agrae's replay buffer")
        return False
    return True


def _batch_acc(batch) -> torch.Tensor | None:
    """The reward function's ``acc`` of each row of ``batch``, in the order verl hands the rows to the estimator,
    or None when it reports none.

    V1 trainers pass a TransferQueue ``KVBatchMeta`` (rows in ``batch.keys`` order; ``acc`` in each trajectory's
    ``reward_extra_info``); a ``DataProto`` (verl's legacy trainer, tests) carries it as ``non_tensor_batch["acc"]``.
    """
    if hasattr(batch, "non_tensor_batch"):
        column = batch.non_tensor_batch.get("acc")
        if column is None:
            return None
        accs = list(column)
    else:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        accs = [reward_acc(extra) for extra in data["extra_fields"]]
    if all(a is None for a in accs):
        return None
    if any(a is None for a in accs):
        raise ValueError("the reward function reported acc for some responses of the batch but not all")
    return torch.tensor([float(a) for a in accs], dtype=torch.float64)


def step_record(step: AgraeStep, global_step: int) -> dict[str, Any]:
    """What one step's record holds: the estimator's inputs as verl passed them and everything it computed."""
    result: AgraeResult = step.result
    mask = step.inputs["response_mask"]
    index = step.inputs["index"]
    return {
        "step": int(global_step),
        "estimator": ESTIMATOR_NAME,
        "token_level_rewards": step.inputs["token_level_rewards"].detach().cpu().clone(),
        "response_mask": mask.detach().cpu().clone(),
        "index": [str(u) for u in index] if index is not None else None,
        "advantages": step.advantages.detach().cpu().clone(),  # what verl trained on
        "acc": None if step.acc is None else step.acc.clone(),
        "success": result.success.detach().cpu().clone(),
        "options": dataclasses.asdict(result.options),
        "mu": float(result.mu),
        "mu_batch": float(result.mu_batch),
        "mu_source": result.mu_source,
        "extra_group_success": list(result.extra_group_success),
    }


class AgraeTrainerMixin:
    """Adds A-GRAE metrics, pre-filter ``mu``, records and an optional reference pool to a verl V1 trainer."""

    config: Any
    global_steps: int
    total_training_steps: int

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
        verl_logger = logging.getLogger(PPOTrainerSync.__module__.rpartition(".")[0] + ".trainer_base")
        verl_logger.addFilter(_cap_is_honoured)  # verl says the cap is ignored: under our modes it is not
        try:
            buffer = super()._build_replay_buffer()
        finally:
            verl_logger.removeFilter(_cap_is_honoured)
        filter_groups = self.config.algorithm.get("filter_groups", None) or {}
        buffer = adopt(
            buffer,
            success_threshold=AgraeConfig.from_algorithm(self.config.algorithm).success_threshold,
            max_num_gen_batches=filter_groups.get("max_num_gen_batches", 0),
            on_cap=self.config.trainer.v1.sampler.get("on_generation_cap", None) or "error",
        )
        # verl's buffer checks for finished rollouts every 2 s (fixed in its constructor), so every sync step
        # waits ~1 s after generation ends, on average: a fifth of a tiny CPU step. `poll_interval` lets a
        # config shorten it (cpu.yaml does).
        interval = self.config.trainer.v1.sampler.get("poll_interval", None)
        if interval is not None:
            if float(interval) <= 0:
                raise ValueError(f"trainer.v1.sampler.poll_interval must be > 0, got {interval}")
            buffer.poll_interval = float(interval)
        return buffer

    def fit(self, *args, **kwargs):
        try:
            return super().fit(*args, **kwargs)
        except Exception as e:
            # Which roles a dead FSDP worker hosted depends on the layout; the note travels with the error to the
            # driver, whose message names the roles (trainer/failures.py).
            e.add_note(worker_layout_note(self))
            raise

    def _step_once(self, metrics: dict, timing_raw: dict, sample_batch_size: int):
        try:
            return super()._step_once(metrics, timing_raw, sample_batch_size)
        except RuntimeError as e:
            # A dead rollout server fails its requests; verl's sync buffer then finds no trajectories and says
            # so, pointing at sync_refill_failed_groups. Which actor died is what the user needs to read.
            if NO_TRAJECTORIES not in str(e):
                raise
            died = self._dead_rollout_server()
            if died is not None:
                raise died from e
            raise

    def _dead_rollout_server(self) -> BaseException | None:
        """Ray's error for the first rollout server actor that no longer answers, or None."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

        manager = getattr(self, "llm_server_manager", None)
        for replica in manager.get_replicas() if manager is not None else ():
            for server in getattr(replica, "servers", ()):
                try:
                    ray.get(server.__ray_ready__.remote(), timeout=30)
                except (ActorDiedError, ActorUnavailableError) as died:
                    return died
                except GetTimeoutError:  # alive but busy: not the one
                    continue
        return None

    def _compute_advantage(self, batch, metrics: dict):
        generated = metrics.pop(GENERATED_GROUPS_KEY, None)  # not a scalar: never logged as is
        if generated is not None:
            metrics[PREFIX + "prompts_generated"] = float(generated["prompts"])
            metrics[PREFIX + "generation_cap_reached"] = float(generated["cap_reached"])
        if self.config.algorithm.adv_estimator != ESTIMATOR_NAME:
            return super()._compute_advantage(batch, metrics)
        step = AgraeStep(
            dropped_groups=metrics.get(DAPO_FILTERED_REWARD_COUNTS_KEY) or {},
            left_out_success=None if generated is None else [*generated["dropped"], *generated["surplus"]],
            acc=_batch_acc(batch),
        )
        if generated is not None:
            metrics[PREFIX + "groups_surplus"] = float(len(generated["surplus"]))
        with bind_step(step):
            batch = super()._compute_advantage(batch, metrics)
        if step.result is None:
            raise RuntimeError(
                "algorithm.adv_estimator=agrae but the agrae estimator did not run in the trainer's process this "
                "step (was the advantage computed elsewhere, or did verl call another estimator?)"
            )
        metrics.update(diagnostics_from_result(step.result))
        metrics[PREFIX + "groups_dropped"] = float(
            len(generated["dropped"]) if generated is not None else len(step.result.extra_group_success)
        )
        record_dir = os.environ.get(RECORD_DIR_ENV)
        if record_dir:
            self._write_record(Path(record_dir), step)
        return batch

    def step(self, metrics: dict, timing_raw: dict):
        self._step_metrics = metrics  # the dict verl fills during the step and logs at its end
        return super().step(metrics, timing_raw)

    def _save_checkpoint(self):
        # Before the checkpoint: once it exists, resume skips this step, so its metrics must already be on disk.
        logger_path = os.environ.get("VERL_FILE_LOGGER_PATH")
        metrics = getattr(self, "_step_metrics", None)
        if logger_path and metrics is not None:
            row = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            try:
                with open(Path(logger_path).with_name(CHECKPOINTED_METRICS_FILE), "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": int(self.global_steps), "data": row}) + "\n")
            except OSError:  # a by-product: it must never stop training
                logger.exception("could not write the metrics of step %s before its checkpoint", self.global_steps)
        result = super()._save_checkpoint()
        self._saved_step = self.global_steps
        return result

    def on_step_end(self):
        """verl's end of step, then a save-and-stop request is honoured (the step's checkpoint first)."""
        stop_file = os.environ.get(stop_request.STOP_FILE_ENV)
        # The last step ends the run anyway (and verl saves it when save_freq > 0): nothing to stop.
        stopping = self.global_steps < self.total_training_steps and stop_request.requested(stop_file)
        if stopping and getattr(self, "_saved_step", None) != self.global_steps:
            # Before verl's own end of step (the weight sync to the rollout): the checkpoint is what the request is
            # for, and it must not wait on anything that could hang.
            self._save_checkpoint()
        super().on_step_end()
        if stopping:
            stop_request.acknowledge(stop_file, self.global_steps)
            logger.warning(
                "stop requested (%s): step %d is checkpointed; training stops after logging it",
                stop_file,
                self.global_steps,
            )
            # verl's fit() loop runs while global_steps <= total_training_steps and increments global_steps after
            # logging the step: this makes the current step the last one, without the is_last_step extras.
            self.total_training_steps = self.global_steps

    def _write_record(self, record_dir: Path, step: AgraeStep) -> None:
        try:
            record_dir.mkdir(parents=True, exist_ok=True)
            with atomic_target(record_dir / f"step-{int(self.global_steps):05d}.pt") as tmp:
                torch.save(step_record(step, self.global_steps), tmp)
        except Exception:  # a record is a by-product: it must never stop training
            logger.exception("could not write the advantage record of step %s", self.global_steps)

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


class AgraeSyncTrainer(AgraeTrainerMixin, PPOTrainerSync):
    """verl's ``sync`` trainer with A-GRAE metrics and pre-filter ``mu``."""


class AgraeSeparateAsyncTrainer(AgraeTrainerMixin, PPOTrainerSeparateAsync):
    """verl's ``separate_async`` trainer (rollout on its own pool) with A-GRAE metrics and pre-filter ``mu``."""


def register_trainers() -> None:
    """Register ``agrae_sync`` and ``agrae_separate_async`` with verl (idempotent), with the patch they need."""
    from verl_agrae.integration.patches import separate_async_logs_with_print_keywords

    separate_async_logs_with_print_keywords()
    register_trainer("agrae_sync")(AgraeSyncTrainer)
    register_trainer("agrae_separate_async")(AgraeSeparateAsyncTrainer)
