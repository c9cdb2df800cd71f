"""vLLM backend: one engine per GPU (or tensor-parallel group), Ray spreads shards over engines.

Written against vLLM's documented offline API (``LLM``, ``SamplingParams``, ``LLM.generate``,
``RequestOutput.outputs[i].text / token_ids / finish_reason``). NOT exercised in this project's
CI (no GPU, vLLM not installed); the HF backend is the tested path.

Reproducibility: every problem is one request with ``SamplingParams(n=..., seed=derive_seed(base, index))``,
so its samples do not depend on which engine or batch served it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from verl_agrae.eval.datasets import EvalProblem
from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig, derive_seed

logger = logging.getLogger(__name__)

_VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def vllm_available() -> bool:
    """True when vLLM is importable and a CUDA GPU is visible."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class VLLMEngine:
    """One vLLM engine (all GPUs listed in ``CUDA_VISIBLE_DEVICES`` when TP > 1)."""

    def __init__(self, model_dir: str, gen: GenerationConfig, seed: int) -> None:
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "tensor_parallel_size": gen.tensor_parallel_size,
            "dtype": _VLLM_DTYPES.get(gen.dtype, gen.dtype),
            "seed": seed,
            "gpu_memory_utilization": gen.gpu_memory_utilization,
            "enable_prefix_caching": True,  # the n samples of a problem share its prompt
            # vLLM's own defaults, not the model's generation_config.json (which may add top_k or
            # repetition penalties): the protocol is temperature + top_p only.
            "generation_config": "vllm",
        }
        if gen.max_model_len:
            kwargs["max_model_len"] = gen.max_model_len
        if gen.tensor_parallel_size > 1:
            # Inside a Ray actor the engine's workers are local processes on the actor's GPUs.
            kwargs["distributed_executor_backend"] = "mp"
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, problems: list[EvalProblem], start: int, sampling: SamplingConfig) -> list[list[dict[str, Any]]]:
        """Same contract as :meth:`verl_agrae.eval.hf_backend.HFBackend.generate`."""
        from vllm import SamplingParams

        prompts = []
        for p in problems:
            if getattr(self.tokenizer, "chat_template", None):
                prompts.append(self.tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=False))
            else:
                prompts.append("\n".join(m["content"] for m in p.prompt) + "\n")
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=derive_seed(sampling.seed, start + i),
            )
            for i in range(len(problems))
        ]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        out = []
        for res in results:
            completions = sorted(res.outputs, key=lambda c: c.index)
            out.append(
                [
                    {
                        "text": c.text,
                        "n_tokens": len(c.token_ids),
                        "finish_reason": "length" if c.finish_reason == "length" else "stop",
                    }
                    for c in completions
                ]
            )
        return out

    def close(self) -> None:
        """Release the engine."""
        del self.llm


def run_vllm_shards(
    model_dir: str,
    gen: GenerationConfig,
    sampling: SamplingConfig,
    tasks: list[tuple[int, int, list[EvalProblem]]],
    on_done: Callable[[int, int, list[list[dict[str, Any]]]], None],
) -> None:
    """Generate shards on vLLM engines, one shard per engine at a time.

    With one engine (a single GPU, or ``num_engines: 1``) the engine runs in this process. With more,
    each engine is a Ray actor holding ``tensor_parallel_size`` GPUs (``ray.init`` joins the cluster
    named by ``RAY_ADDRESS`` if set, else starts a local one); shards are handed out as engines free
    up, and ``on_done`` (which writes the shard) runs in this process as each one finishes.

    Args:
        model_dir: Hugging Face model directory (must be readable on every node).
        gen: generation settings.
        sampling: sampling settings.
        tasks: ``(start, end, problems)`` per pending shard.
        on_done: called with ``(start, end, samples)`` per finished shard.
    """
    if not tasks:
        return
    num_engines = gen.num_engines
    if num_engines == 0:
        try:
            import torch

            local_gpus = torch.cuda.device_count()
        except ImportError:
            local_gpus = 0
        num_engines = max(1, local_gpus // gen.tensor_parallel_size) if not os.environ.get("RAY_ADDRESS") else -1
    if num_engines == 1:
        engine = VLLMEngine(model_dir, gen, sampling.seed)
        try:
            for start, end, probs in tasks:
                on_done(start, end, engine.generate(probs, start, sampling))
        finally:
            engine.close()
        return

    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, ignore_reinit_error=True)
    if num_engines < 0:  # joined an existing cluster: one engine per TP group of its GPUs
        num_engines = max(1, int(ray.cluster_resources().get("GPU", 0)) // gen.tensor_parallel_size)
    num_engines = min(num_engines, len(tasks))
    actor_cls = ray.remote(num_gpus=gen.tensor_parallel_size)(VLLMEngine)
    actors = [actor_cls.remote(model_dir, gen, sampling.seed) for _ in range(num_engines)]
    logger.info("vLLM: %d engine(s) x TP %d for %d shard(s)", num_engines, gen.tensor_parallel_size, len(tasks))
    queue = list(tasks)
    running: dict[Any, tuple[Any, int, int]] = {}
    try:
        for actor in actors:
            if queue:
                start, end, probs = queue.pop(0)
                running[actor.generate.remote(probs, start, sampling)] = (actor, start, end)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            actor, start, end = running.pop(ref)
            on_done(start, end, ray.get(ref))
            if queue:
                nstart, nend, probs = queue.pop(0)
                running[actor.generate.remote(probs, nstart, sampling)] = (actor, nstart, nend)
    finally:
        for actor in actors:
            ray.kill(actor)
