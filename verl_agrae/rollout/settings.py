"""Settings of the ``hf`` rollout backend, read from verl's rollout config.

They live under ``actor_rollout_ref.rollout.engine_kwargs.hf`` — the place verl gives every backend for its
own engine arguments (``engine_kwargs.vllm``, ``engine_kwargs.sglang``, ...). The base ``ppo_trainer``
schema does not declare ``engine_kwargs.hf``, so on the command line prefix new keys with ``+``
(``+actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=32``) unless a packaged config declares them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["ENGINE_KWARGS_KEY", "HFRolloutSettings", "resolve_device", "resolve_dtype"]

ENGINE_KWARGS_KEY = "hf"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class HFRolloutSettings:
    """Engine settings of the ``hf`` rollout.

    Attributes:
        max_batch_size: most sequences (requests x n) decoded together in one ``generate`` call.
        max_wait_ms: after the first request of a batch arrives, how long to wait for more before
            decoding. Concurrent requests from verl's agent loop arrive within a few milliseconds.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: model dtype; None uses ``rollout.dtype``. Use float32 on CPU so rollout log-probs match
            the actor's (bfloat16 rounding alone gives gaps around 1e-2).
        attn_implementation: attention kernel passed to ``from_pretrained``; sdpa works everywhere.
        num_threads: torch intra-op threads of the server's compute thread: an int, ``"auto"`` (every CPU this
            process may use) or None (inherit; Ray sets ``OMP_NUM_THREADS=1`` in actors without ``num_cpus``,
            so the server then decodes on one core).
    """

    max_batch_size: int = 64
    max_wait_ms: float = 20.0
    device: str = "auto"
    dtype: str | None = None
    attn_implementation: str = "sdpa"
    num_threads: int | str | None = None

    def __post_init__(self) -> None:
        if int(self.max_batch_size) < 1:
            raise ValueError(f"engine_kwargs.hf.max_batch_size must be >= 1, got {self.max_batch_size}")
        if float(self.max_wait_ms) < 0:
            raise ValueError(f"engine_kwargs.hf.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.dtype is not None and str(self.dtype) not in _DTYPES:
            raise ValueError(f"engine_kwargs.hf.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.num_threads is not None and self.num_threads != "auto":
            if isinstance(self.num_threads, str) and not self.num_threads.isdigit():
                raise ValueError(
                    f"engine_kwargs.hf.num_threads must be an int, 'auto' or null, got {self.num_threads!r}"
                )
            if int(self.num_threads) < 1:
                raise ValueError(f"engine_kwargs.hf.num_threads must be >= 1, got {self.num_threads}")

    def resolved_num_threads(self) -> int | None:
        """The thread count to set (None: leave torch's setting alone)."""
        if self.num_threads is None:
            return None
        if self.num_threads == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return int(self.num_threads)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> HFRolloutSettings:
        """Build settings from the ``engine_kwargs.hf`` mapping, rejecting unknown keys by name."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} under actor_rollout_ref.rollout.engine_kwargs.hf; known: {sorted(known)}"
            )
        return cls(**values)

    @classmethod
    def from_rollout_config(cls, config: Any) -> HFRolloutSettings:
        """Read ``engine_kwargs.hf`` from a verl ``RolloutConfig`` (dataclass or DictConfig)."""
        engine_kwargs = getattr(config, "engine_kwargs", None) or {}
        hf = engine_kwargs.get(ENGINE_KWARGS_KEY) if hasattr(engine_kwargs, "get") else None
        if hf is not None and not isinstance(hf, Mapping):
            try:
                from omegaconf import OmegaConf

                hf = OmegaConf.to_container(hf, resolve=True)
            except Exception as e:  # not a DictConfig either
                raise ValueError(f"engine_kwargs.hf must be a mapping, got {type(hf).__name__}") from e
        return cls.from_mapping(hf)


def resolve_device(device: str) -> torch.device:
    """Turn the ``device`` setting into a torch device (``auto``: CUDA when available, else CPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"engine_kwargs.hf.device={device!r} but CUDA is not available in the rollout server")
    return dev


def resolve_dtype(settings_dtype: str | None, rollout_dtype: str | None) -> torch.dtype:
    """The model dtype: the ``hf`` setting when given, else ``rollout.dtype`` (default float32)."""
    name = settings_dtype if settings_dtype is not None else (rollout_dtype or "float32")
    name = str(name).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"unsupported rollout dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]
