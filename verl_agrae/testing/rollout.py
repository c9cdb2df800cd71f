"""verl configs for tests and benchmarks of the ``hf`` rollout (no downloads).

:func:`rollout_configs` builds the verl ``RolloutConfig`` / ``HFModelConfig`` pair a server needs. Tiny
models (plain or "lively") come from :mod:`verl_agrae.testing.tiny_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["rollout_configs"]


def rollout_configs(
    model_dir: str | Path,
    prompt_length: int = 64,
    response_length: int = 16,
    dtype: str = "float32",
    **hf_settings: Any,
) -> tuple[Any, Any]:
    """verl ``(RolloutConfig, HFModelConfig)`` for an ``hf`` server on ``model_dir``.

    Args:
        model_dir: model directory.
        prompt_length: ``rollout.prompt_length``.
        response_length: ``rollout.response_length`` (default ``max_tokens``).
        dtype: ``rollout.dtype``.
        **hf_settings: ``engine_kwargs.hf`` entries (``max_batch_size``, ``max_wait_ms``, ...).
    """
    from verl.workers.config import HFModelConfig, RolloutConfig

    config = RolloutConfig(
        name="hf",
        tensor_model_parallel_size=1,
        prompt_length=prompt_length,
        response_length=response_length,
        dtype=dtype,
        engine_kwargs={"hf": dict(hf_settings)},
    )
    model_config = HFModelConfig(path=str(model_dir), override_config={"attn_implementation": "sdpa"})
    return config, model_config
