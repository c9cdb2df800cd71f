"""Helpers for tests and benchmarks of the ``hf`` rollout (no downloads).

- :func:`make_lively_model` re-initialises a tiny model with large weights: the default random init gives
  near-uniform logits whose greedy continuation just repeats the last token, which would make "batched
  equals one-at-a-time" checks trivially true.
- :func:`rollout_configs` builds the verl ``RolloutConfig`` / ``HFModelConfig`` pair a server needs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["make_lively_model", "rollout_configs"]


def make_lively_model(src: str | Path, dst: str | Path, seed: int = 0, std: float = 0.5) -> Path:
    """Copy the model directory ``src`` to ``dst`` with every weight matrix redrawn from N(0, std^2).

    Args:
        src: a Hugging Face causal-LM directory (e.g. from ``build_tiny_model``).
        dst: output directory (tokenizer files are copied unchanged).
        seed: seed of the redraw.
        std: standard deviation of the new weights.

    Returns:
        ``Path`` of ``dst``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    src, dst = Path(src), Path(dst)
    if (dst / "config.json").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.is_file() and not (dst / f.name).exists():
            shutil.copy(f, dst / f.name)
    return dst


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
