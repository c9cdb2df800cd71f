"""Rollout speed benchmarks: what request batching buys the ``hf`` rollout, and vLLM (CPU build) vs ``hf``.

:func:`measure_batching_speedup`: the same responses one at a time vs concurrently, on one server in one
process, with the same prompts, sampling options and a fixed number of tokens per response (``ignore_eos``), so
both arms do exactly the same decoding work; only the batching differs.

:func:`measure_vllm_vs_hf`: the same responses (same prompt token ids, same fixed length) from the ``hf``
rollout's batched server and from a vLLM engine built with the eval backend's settings
(:func:`verl_agrae.eval.vllm_backend.engine_kwargs`: fp32 and an explicit KV cache on CPU); engine start is timed
apart from decoding.

:func:`measure_live_weights_cost`: the same generations on vLLM's CPU engine with its packed (oneDNN) linear
weights and with our plugin's live weights (what verl's in-place weight sync needs), each engine in a fresh process.

``benchmarks/rollout_bench.py`` is the command-line front end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BatchingBenchResult",
    "LiveWeightsCostResult",
    "VLLMArm",
    "VLLMvsHFResult",
    "arithmetic_prompt_ids",
    "measure_batching_speedup",
    "measure_live_weights_cost",
    "measure_vllm_vs_hf",
    "time_vllm_arm",
]

logger = logging.getLogger(__name__)


@dataclass
class BatchingBenchResult:
    """Timings of one batching benchmark run (seconds)."""

    model: str
    device: str
    responses: int
    distinct_prompts: int
    tokens_per_response: int
    one_at_a_time_s: float
    batched_s: float
    batched_generate_calls: int
    num_threads: int
    speedup: float
    speedups: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def arithmetic_prompt_ids(tokenizer: Any, count: int, seed: int = 0) -> list[list[int]]:
    """``count`` chat prompts "What is a + b?" tokenized with the model's chat template (if it has one)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        question = f"What is {rng.randint(0, 99)} + {rng.randint(0, 99)}? Put the answer in \\boxed{{}}."
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(question)["input_ids"]
        prompts.append([int(t) for t in ids])
    return prompts


def measure_batching_speedup(
    model_dir: str | Path,
    responses: int = 32,
    distinct_prompts: int | None = 8,
    max_tokens: int = 64,
    max_batch_size: int = 64,
    temperature: float = 1.0,
    device: str = "auto",
    seed: int = 0,
    num_threads: int | None = None,
    repeats: int = 1,
) -> BatchingBenchResult:
    """Generate ``responses`` responses of ``max_tokens`` tokens one request at a time, then all concurrently.

    Args:
        model_dir: Hugging Face model directory.
        responses: number of responses in each arm (one request each, as verl's agent loop sends them).
        distinct_prompts: how many different prompts the responses cycle through; the default 8 is verl's
            GRPO shape for 32 responses (8 prompts x ``rollout.n=4``). None: every prompt different.
        max_tokens: tokens per response (EOS ignored, so both arms decode the same number of tokens).
        max_batch_size: the server's ``engine_kwargs.hf.max_batch_size``.
        temperature: sampling temperature.
        device: the server's ``engine_kwargs.hf.device``.
        seed: prompt and sampling seed.
        num_threads: the server's ``engine_kwargs.hf.num_threads`` (None: torch's default).
        repeats: run the two arms this many times, alternating, so slow periods of a shared machine hit both.

    Returns:
        :class:`BatchingBenchResult`; ``speedup`` is the median over repeats of one-at-a-time time / batched
        time, the times are means over repeats.
    """
    from verl_agrae.rollout.server import HFRolloutServer
    from verl_agrae.testing.rollout import rollout_configs

    config, model_config = rollout_configs(
        model_dir,
        prompt_length=512,
        response_length=max_tokens,
        max_batch_size=max_batch_size,
        max_wait_ms=20,
        device=device,
        num_threads=num_threads,
    )
    distinct = arithmetic_prompt_ids(model_config.tokenizer, distinct_prompts or responses, seed=seed)
    prompts = [distinct[i % len(distinct)] for i in range(responses)]
    params = {"temperature": temperature, "top_p": 1.0, "top_k": -1, "logprobs": True, "ignore_eos": True}

    async def run() -> BatchingBenchResult:
        server = HFRolloutServer(config, model_config)
        await server.launch_server(start_http=False)
        try:
            await server.generate(prompt_ids=prompts[0], sampling_params={**params, "max_tokens": 4}, request_id="w")
            seq_times, batch_times, calls = [], [], 0
            for _ in range(repeats):
                start = time.perf_counter()
                for i, p in enumerate(prompts):
                    await server.generate(prompt_ids=p, sampling_params={**params, "seed": seed + i}, request_id=str(i))
                seq_times.append(time.perf_counter() - start)
                calls_before = server.get_stats()["num_batches"]
                start = time.perf_counter()
                outs = await asyncio.gather(
                    *[
                        server.generate(prompt_ids=p, sampling_params={**params, "seed": seed + i}, request_id=str(i))
                        for i, p in enumerate(prompts)
                    ]
                )
                batch_times.append(time.perf_counter() - start)
                calls = server.get_stats()["num_batches"] - calls_before
                if not all(len(o.token_ids) == max_tokens for o in outs):
                    raise RuntimeError("a batched response ended early although EOS is ignored")
                logger.info("repeat: one at a time %.2fs, batched %.2fs", seq_times[-1], batch_times[-1])
            ratios = [a / b for a, b in zip(seq_times, batch_times, strict=True)]
            return BatchingBenchResult(
                model=str(model_dir),
                device=str(server.device),
                responses=responses,
                distinct_prompts=len(distinct),
                tokens_per_response=max_tokens,
                one_at_a_time_s=statistics.mean(seq_times),
                batched_s=statistics.mean(batch_times),
                batched_generate_calls=calls,
                num_threads=server.get_stats()["num_threads"],
                speedup=statistics.median(ratios),
                speedups=ratios,
            )
        finally:
            await server.shutdown()

    return asyncio.run(run())


@dataclass
class VLLMvsHFResult:
    """One vLLM-vs-``hf`` run. Times in seconds (means over repeats), throughput in generated tokens per second.

    ``vllm_start_s`` is ``vllm.LLM(...)`` (engine processes, weights, KV cache, ``torch.compile`` unless
    ``enforce_eager``), ``vllm_import_s`` the ``import vllm`` before it; ``hf_start_s`` is the ``hf`` server's
    model load. ``ratio`` = vLLM tokens/s / ``hf`` tokens/s from this run (median over repeats).
    """

    model: str
    platform: str
    responses: int
    distinct_prompts: int
    tokens_per_response: int
    hf_num_threads: int
    hf_start_s: float
    hf_s: float
    hf_tokens_per_s: float
    vllm_import_s: float
    vllm_start_s: float
    vllm_s: float
    vllm_tokens_per_s: float
    enforce_eager: bool
    vllm_dtype: str
    kv_cache_bytes: int | None
    ratio: float
    ratios: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_vllm_vs_hf(
    model_dir: str | Path,
    responses: int = 32,
    distinct_prompts: int | None = 8,
    max_tokens: int = 64,
    max_batch_size: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    num_threads: int | None = None,
    repeats: int = 1,
    enforce_eager: bool = False,
    kv_cache_gib: float | None = 1.0,
) -> VLLMvsHFResult:
    """Generate ``responses`` responses of exactly ``max_tokens`` tokens with the ``hf`` rollout, then with vLLM.

    The ``hf`` arm sends every request at once to one :class:`~verl_agrae.rollout.server.HFRolloutServer`
    (its batched path, fp32); the vLLM arm passes the same prompt token ids to one ``LLM.generate`` call with
    ``ignore_eos`` and ``min_tokens = max_tokens``, so both decode the same number of tokens. Each engine is
    warmed up by a short request before timing. The arms run one after the other, ``hf`` first and before
    vLLM is even imported: with a vLLM CPU engine alive in the background the ``hf`` arm ran 4.6x slower on
    2 cores (51.8 s vs 11.2 s, measured), so alternating them would measure the interference, not the backends.

    Args:
        model_dir: Hugging Face model directory (vLLM on CPU needs an attention head size >= 32).
        responses: responses per arm, one request each.
        distinct_prompts: different prompts among them (default 8: verl's GRPO shape); None: all different.
        max_tokens: tokens per response.
        max_batch_size: the ``hf`` server's ``engine_kwargs.hf.max_batch_size``.
        temperature: sampling temperature (top_p 1).
        seed: prompt and sampling seed.
        num_threads: the ``hf`` server's torch threads (None: torch's default). vLLM's CPU worker binds its own.
        repeats: timed generations per arm (the ratio is the median of the per-repeat ratios).
        enforce_eager: vLLM without ``torch.compile`` (faster start, usually slower decoding).
        kv_cache_gib: vLLM KV cache (``generation.kv_cache_gib``); None: the eval backend's default.

    Returns:
        :class:`VLLMvsHFResult`.
    """
    from verl_agrae.rollout.server import HFRolloutServer
    from verl_agrae.testing.rollout import rollout_configs

    config, model_config = rollout_configs(
        model_dir,
        prompt_length=512,
        response_length=max_tokens,
        max_batch_size=max_batch_size,
        max_wait_ms=20,
        device="cpu",
        num_threads=num_threads,
    )
    distinct = arithmetic_prompt_ids(model_config.tokenizer, distinct_prompts or responses, seed=seed)
    prompts = [distinct[i % len(distinct)] for i in range(responses)]
    total_tokens = responses * max_tokens
    hf_params = {"temperature": temperature, "top_p": 1.0, "top_k": -1, "ignore_eos": True, "max_tokens": max_tokens}

    async def run_hf() -> tuple[float, list[float], int]:
        t = time.perf_counter()
        server = HFRolloutServer(config, model_config)
        await server.launch_server(start_http=False)
        start_s = time.perf_counter() - t
        try:
            await server.generate(prompt_ids=prompts[0], sampling_params={**hf_params, "max_tokens": 4}, request_id="w")
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                outs = await asyncio.gather(
                    *[
                        server.generate(
                            prompt_ids=p, sampling_params={**hf_params, "seed": seed + i}, request_id=f"r{i}"
                        )
                        for i, p in enumerate(prompts)
                    ]
                )
                times.append(time.perf_counter() - t)
                if not all(len(o.token_ids) == max_tokens for o in outs):
                    raise RuntimeError("an hf response ended early although EOS is ignored")
                logger.info("hf: %d x %d tokens in %.2fs", responses, max_tokens, times[-1])
            return start_s, times, int(server.get_stats()["num_threads"])
        finally:
            await server.shutdown()

    hf_start_s, hf_times, hf_threads = asyncio.run(run_hf())

    arm = time_vllm_arm(
        model_dir,
        prompts,
        max_tokens,
        temperature,
        seed,
        repeats,
        enforce_eager=enforce_eager,
        kv_cache_gib=kv_cache_gib,
    )
    vllm_times = arm.times
    # Repeat i of one arm is paired with repeat i of the other.
    ratios = [h / v for h, v in zip(hf_times, vllm_times, strict=True)]
    hf_s, vllm_s = statistics.mean(hf_times), statistics.mean(vllm_times)
    return VLLMvsHFResult(
        model=str(model_dir),
        platform=arm.platform,
        responses=responses,
        distinct_prompts=len(distinct),
        tokens_per_response=max_tokens,
        hf_num_threads=hf_threads,
        hf_start_s=hf_start_s,
        hf_s=hf_s,
        hf_tokens_per_s=total_tokens / hf_s,
        vllm_import_s=arm.import_s,
        vllm_start_s=arm.start_s,
        vllm_s=vllm_s,
        vllm_tokens_per_s=total_tokens / vllm_s,
        enforce_eager=enforce_eager,
        vllm_dtype=arm.dtype,
        kv_cache_bytes=arm.kv_cache_bytes,
        ratio=statistics.median(ratios),
        ratios=ratios,
    )


@dataclass
class VLLMArm:
    """One timed vLLM engine: ``import vllm`` and ``LLM(...)`` seconds, then one duration per timed repeat."""

    platform: str
    dtype: str
    kv_cache_bytes: int | None
    live_weights: bool | None
    import_s: float
    start_s: float
    times: list[float]


def time_vllm_arm(
    model_dir: str | Path,
    prompts: list[list[int]],
    max_tokens: int,
    temperature: float,
    seed: int,
    repeats: int,
    *,
    enforce_eager: bool,
    kv_cache_gib: float | None,
    live_weights: bool | None = None,
) -> VLLMArm:
    """Start a vLLM engine with the eval backend's settings and time ``repeats`` generations of ``prompts``.

    Every response decodes exactly ``max_tokens`` tokens (``ignore_eos``, ``min_tokens``); a short warm-up request
    runs before timing.

    Args:
        model_dir: Hugging Face model directory.
        prompts: prompt token ids, one request each.
        max_tokens: tokens per response.
        temperature: sampling temperature (top_p 1); request i is seeded ``seed + i``.
        seed: engine and sampling seed.
        repeats: timed generations.
        enforce_eager: vLLM without ``torch.compile``.
        kv_cache_gib: ``generation.kv_cache_gib`` (None: the eval backend's default).
        live_weights: None, or check that our vLLM plugin's live-weights mode is on (True) or off (False) in
            this process. The caller sets :data:`~verl_agrae.integration.vllm_plugin.LIVE_WEIGHTS_ENV` before vLLM
            is imported and runs the engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the
            check sees the engine's own module state.

    Raises:
        RuntimeError: a response ended early, or the live-weights mode is not what ``live_weights`` says.
    """
    from verl_agrae.eval.sampling import GenerationConfig
    from verl_agrae.eval.vllm_backend import engine_kwargs, vllm_platform_is_cpu
    from verl_agrae.integration.patches import vllm_live_weights_active

    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams

    import_s = time.perf_counter() - t0
    on_cpu = vllm_platform_is_cpu()
    gen = GenerationConfig(backend="vllm", enforce_eager=enforce_eager, kv_cache_gib=kv_cache_gib)
    kwargs = engine_kwargs(str(model_dir), gen, seed, on_cpu=on_cpu)
    token_prompts = [{"prompt_token_ids": p} for p in prompts]
    params = [
        SamplingParams(
            n=1,
            temperature=temperature,
            top_p=1.0,
            max_tokens=max_tokens,
            min_tokens=max_tokens,
            ignore_eos=True,
            seed=seed + i,
        )
        for i in range(len(prompts))
    ]
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    start_s = time.perf_counter() - t0
    try:
        if live_weights is not None and live_weights != vllm_live_weights_active():
            raise RuntimeError(f"vLLM live-weights mode is {not live_weights}, expected {live_weights}")
        llm.generate(token_prompts[:1], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            outs = llm.generate(token_prompts, params, use_tqdm=False)
            times.append(time.perf_counter() - t0)
            if not all(len(o.outputs[0].token_ids) == max_tokens for o in outs):
                raise RuntimeError("a vLLM response ended early although EOS is ignored")
            logger.info("vllm: %d x %d tokens in %.2fs", len(prompts), max_tokens, times[-1])
    finally:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
    return VLLMArm(
        platform="cpu" if on_cpu else "gpu",
        dtype=str(kwargs["dtype"]),
        kv_cache_bytes=kwargs.get("kv_cache_memory_bytes"),
        live_weights=live_weights,
        import_s=import_s,
        start_s=start_s,
        times=times,
    )


def _vllm_arm_in_fresh_process(kwargs: dict[str, Any], live_weights: bool) -> VLLMArm:
    # Runs in a spawned interpreter: the plugin reads its variable when vLLM loads plugins, once per process.
    import os

    from verl_agrae.integration.vllm_plugin import LIVE_WEIGHTS_ENV

    os.environ[LIVE_WEIGHTS_ENV] = "1" if live_weights else "0"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process, where the check can see it
    return time_vllm_arm(**kwargs, live_weights=live_weights)


@dataclass
class LiveWeightsCostResult:
    """vLLM on CPU with our plugin's live weights vs vLLM's packed weights (what training pays for weight sync).

    ``ratio`` = live tokens/s / packed tokens/s (median of per-repeat ratios; below 1 means the plugin costs).
    """

    model: str
    responses: int
    tokens_per_response: int
    enforce_eager: bool
    packed_start_s: float
    live_start_s: float
    packed_s: float
    live_s: float
    packed_tokens_per_s: float
    live_tokens_per_s: float
    ratio: float
    ratios: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_live_weights_cost(
    model_dir: str | Path,
    responses: int = 32,
    distinct_prompts: int | None = 8,
    max_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    repeats: int = 1,
    enforce_eager: bool = False,
    kv_cache_gib: float | None = 1.0,
) -> LiveWeightsCostResult:
    """Time the same generations on a vLLM engine with packed weights, then on one with live weights.

    Each engine runs in its own fresh process (one after the other, never side by side), so neither inherits the
    other's plugin state and they do not compete for cores. Arguments as in :func:`measure_vllm_vs_hf`.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    distinct = arithmetic_prompt_ids(tokenizer, distinct_prompts or responses, seed=seed)
    prompts = [distinct[i % len(distinct)] for i in range(responses)]
    arm_kwargs = {
        "model_dir": str(model_dir),
        "prompts": prompts,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "repeats": repeats,
        "enforce_eager": enforce_eager,
        "kv_cache_gib": kv_cache_gib,
    }
    arms = {}
    for live in (False, True):
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            arms[live] = pool.submit(_vllm_arm_in_fresh_process, arm_kwargs, live).result()
    packed, live = arms[False], arms[True]
    ratios = [p / q for p, q in zip(packed.times, live.times, strict=True)]
    total = responses * max_tokens
    return LiveWeightsCostResult(
        model=str(model_dir),
        responses=responses,
        tokens_per_response=max_tokens,
        enforce_eager=enforce_eager,
        packed_start_s=packed.start_s,
        live_start_s=live.start_s,
        packed_s=statistics.mean(packed.times),
        live_s=statistics.mean(live.times),
        packed_tokens_per_s=total / statistics.mean(packed.times),
        live_tokens_per_s=total / statistics.mean(live.times),
        ratio=statistics.median(ratios),
        ratios=ratios,
    )
