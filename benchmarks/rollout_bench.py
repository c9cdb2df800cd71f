"""Batched vs one-at-a-time generation with the ``hf`` rollout (issue goal: batched >= 3x faster on 32 responses).

    python benchmarks/rollout_bench.py                 # the CPU demo model if converted, else a tiny model
    python benchmarks/rollout_bench.py --model PATH --responses 32 --max-tokens 64 --json out.json

Both arms run in one process on one server with the same prompts and the same number of tokens per response;
the printed ratio compares them within this run (no fixed thresholds).
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
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two arms this many times")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads in the server (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
