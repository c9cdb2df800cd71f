"""Measure what request batching buys the ``hf`` rollout: the same responses one at a time vs concurrently.

Both arms run on one server in one process, with the same prompts, sampling options and a fixed number of
tokens per response (``ignore_eos``), so they do exactly the same decoding work; only the batching differs.
``benchmarks/rollout_bench.py`` is the command-line front end; other benchmarks import
:func:`measure_batching_speedup`.
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

__all__ = ["BatchingBenchResult", "arithmetic_prompt_ids", "measure_batching_speedup"]

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
