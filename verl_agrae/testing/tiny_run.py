"""Command lines for short verl runs on the tiny local model (tests and benchmarks share them).

Small enough for a 2-core CI machine: 2 prompts x 4 responses of at most 12 tokens, one FSDP rank, no
validation or checkpoints unless asked.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REWARDS", "tiny_run_argv"]

#: ``reward.custom_reward_function.path`` of the deterministic test rewards in :mod:`verl_agrae.testing.rewards`.
REWARDS = "pkg://verl_agrae.testing.rewards"


def tiny_run_argv(
    config_name: str,
    model: str | Path,
    data: str | Path,
    run_dir: str | Path,
    *extra: str,
    steps: int = 1,
    reward: str = "parity_reward",
    prompts: int = 2,
    n: int = 4,
    response_length: int = 12,
    device: str = "cpu",
) -> list[str]:
    """Arguments for :func:`verl_agrae.trainer.main.main` running ``config_name`` on the CPU.

    Args:
        config_name: a packaged config (``cpu``, ``grpo``, ``dapo_agrae``, ...).
        model: tiny model directory (:func:`verl_agrae.testing.tiny_model.build_tiny_model`).
        data: directory with ``train.parquet`` and ``val.parquet`` (verl RL format).
        run_dir: the run directory.
        *extra: more overrides; later ones win.
        steps: training steps.
        reward: function name in :mod:`verl_agrae.testing.rewards`.
        prompts: prompts per step (``data.train_batch_size``, also the PPO mini-batch).
        n: responses per prompt.
        response_length: ``data.max_response_length``.
        device: ``trainer.device`` (``cpu``: our CPU platform and `hf` rollout; ``cuda``: verl's GPU path).
    """
    rows = prompts * n
    data = Path(data)
    return [
        "--config-name",
        config_name,
        f"trainer.device={device}",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'val.parquet'}",
        f"run.dir={run_dir}",
        f"reward.custom_reward_function.path={REWARDS}",
        f"reward.custom_reward_function.name={reward}",
        f"data.train_batch_size={prompts}",
        "data.val_batch_size=8",
        "data.max_prompt_length=160",
        f"data.max_response_length={response_length}",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={rows}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={rows}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={rows}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        f"trainer.total_training_steps={steps}",
        "trainer.save_freq=-1",
        "trainer.test_freq=-1",
        "trainer.val_before_train=False",
        "trainer.logger=[console,file]",
        *extra,
    ]
