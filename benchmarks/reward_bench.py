"""Throughput of the math reward: grading pool with 1 and 2 workers vs math-verify called in one process.

Usage:
    .venv/bin/python benchmarks/reward_bench.py [--n 400] [--repeats 3] [--mix realistic|symbolic] [--json out.json]

All configurations grade the same items in the same run:

- ``math-verify direct``: ``math_verify.parse`` + ``verify`` in this process on the full model output (the usual
  way to call it; its alarm-based timeouts work here because this is the main thread). No hard timeout.
- ``in-process pipeline``: our extraction + fast path + the same symbolic check as the workers, called directly
  in this process. No hard timeout. The like-for-like baseline for the pool's own cost.
- ``pool, 1 worker`` / ``pool, 2 workers``: ``score_batch`` through a :class:`GradingPool` (hard timeout).

Printed: checks/s (median over repeats), scaling 2 vs 1 worker (target >= 1.7x on 2 free cores), pool overhead at
1 worker against both baselines (target < 20%), and the load average, since other processes on the machine
change every figure. Pool start-up time is excluded from throughput and printed separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from verl_agrae.reward import GradingPool, score_batch
from verl_agrae.reward.score import _prepare

FILLER = [
    "First, we rewrite the equation in a more convenient form.",
    "Substituting $x = {a}$ into the expression gives ${a}^2 + {b} = {c}$.",
    "We note that the discriminant $b^2 - 4ac$ must be non-negative.",
    "By the AM-GM inequality, $\\frac{{a+b}}{{2}} \\ge \\sqrt{{ab}}$.",
    "Multiplying both sides by ${b}$, we obtain ${c}x = {a}$.",
    "Let me double-check this computation: ${a} \\times {b} = {c}$.",
    "Hence the sum telescopes, leaving only the first and last terms.",
]


def _answer_pair(kind: int, rng: random.Random, i: int) -> tuple[str | None, str]:
    """(predicted answer or None for no final answer, ground truth); ``i`` keeps items distinct (no cache hits)."""
    a, b = rng.randint(2, 999) + i * 1000, rng.randint(2, 97)
    if kind == 0:  # plain integer, right (fast path)
        return str(a), str(a)
    if kind == 1:  # plain integer, wrong
        return str(a + 1), str(a)
    if kind == 2:  # fraction vs decimal
        return f"\\frac{{{a * 4 + 1}}}{{4}}", f"{(a * 4 + 1) / 4}"
    if kind == 3:  # dfrac vs frac (fast path)
        return f"\\dfrac{{{a}}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}"
    if kind == 4:  # surd forms
        return f"{b}\\sqrt{{{a}}}", f"\\sqrt{{{b * b * a}}}"
    if kind == 5:  # interval with spacing (fast path)
        return f"(-{a}, {b}]", f"(-{a},{b}]"
    if kind == 6:  # tuple in the wrong order
        return f"({b}, {a})", f"({a}, {b})"
    if kind == 7:  # polynomial, factored vs expanded
        return f"x^2 + {a}x", f"x(x+{a})"
    if kind == 8:  # pi multiples
        return f"\\frac{{{a}\\pi}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}\\pi"
    if kind == 9:  # thousands separators and percent
        return f"{a:,}\\%", str(a)
    return None, str(a)  # no final answer


def make_items(n: int, seed: int, mix: str) -> tuple[list[str], list[str]]:
    """Realistic model outputs: a few reasoning sentences with inline LaTeX, then a boxed final answer."""
    rng = random.Random(seed)
    kinds = list(range(11)) if mix == "realistic" else [2, 4, 6, 7, 8, 9]
    solutions, truths = [], []
    for i in range(n):
        pred, truth = _answer_pair(kinds[i % len(kinds)], rng, i)
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        body = " ".join(rng.choice(FILLER).format(a=a, b=b, c=a * b) for _ in range(rng.randint(4, 10)))
        if pred is None:
            end = "I could not finish the computation in time."
        else:
            end = f"Therefore, the final answer is $\\boxed{{{pred}}}$."
        solutions.append(f"Let's solve this step by step.\n{body}\n{end}")
        truths.append(truth)
    return solutions, truths


def direct_math_verify(solutions: list[str], truths: list[str]) -> list[bool]:
    from math_verify import parse, verify

    return [bool(verify(parse(f"${t}$"), parse(s))) for s, t in zip(solutions, truths, strict=True)]


def in_process_pipeline(solutions: list[str], truths: list[str]) -> list[bool]:
    from verl_agrae.reward.verify import math_equal

    out = []
    for s, t in zip(solutions, truths, strict=True):
        item = _prepare("math", s, t)
        out.append(item.acc if item.acc is not None else math_equal(item.pred, item.truth))
    return out


def _rate(fn: Callable[[list[str], list[str]], object], warm_set: tuple, timed_sets: list[tuple]) -> float:
    """Median checks/s of ``fn`` over ``timed_sets``, after one untimed pass over ``warm_set``."""
    fn(*warm_set)
    rates = []
    for sols, gts in timed_sets:
        start = time.perf_counter()
        fn(sols, gts)
        rates.append(len(sols) / (time.perf_counter() - start))
    return statistics.median(rates)


def _measure_in_fresh_process(name: str, warm_set: tuple, timed_sets: list[tuple]) -> float:
    """Run in a spawned interpreter: checks/s of an in-process configuration, warmed like a pool worker."""
    from verl_agrae.reward.worker import _warm_up

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _warm_up()  # the same start-up exercise the workers' template process does
    fn = {"math-verify direct": direct_math_verify, "in-process pipeline": in_process_pipeline}[name]
    return _rate(fn, warm_set, timed_sets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="items per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes per configuration (median reported)")
    parser.add_argument("--mix", choices=["realistic", "symbolic"], default="realistic")
    parser.add_argument("--timeout", type=float, default=5.0, help="pool timeout per item, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    # Every configuration grades the same sequence (a warm-up set, then one fresh set per timed pass) starting from
    # a fresh interpreter: sympy's cache and the LaTeX parser's (ANTLR) DFA cache fill up with use, so a
    # configuration run after another one in the same process would be measured with the other's warm caches.
    # The in-process configurations therefore run in a fresh spawned process each, and each pool has new workers.
    warm_set = make_items(args.n, args.seed + 1000, args.mix)
    timed_sets = [make_items(args.n, args.seed + k, args.mix) for k in range(1, args.repeats + 1)]
    solutions, truths = make_items(args.n, args.seed, args.mix)
    symbolic = sum(_prepare("math", s, t).acc is None for s, t in zip(solutions, truths, strict=True))
    load_before = os.getloadavg()
    print(f"items: {args.n} per pass ({args.mix} mix, {symbolic} need the symbolic check), repeats: {args.repeats}")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cpus: {os.cpu_count()} ({usable} usable by this process), load average: {load_before[0]:.2f}")

    rows: dict[str, float] = {}
    spawn = multiprocessing.get_context("spawn")
    for name in ("math-verify direct", "in-process pipeline"):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as ex:
            rows[name] = ex.submit(_measure_in_fresh_process, name, warm_set, timed_sets).result()

    startup = {}
    timeouts = {}
    for workers in (1, 2):
        start = time.perf_counter()
        with GradingPool(num_workers=workers, timeout=args.timeout) as pool:
            pool.start()
            startup[workers] = time.perf_counter() - start

            def run(sols: list[str], gts: list[str], pool: GradingPool = pool) -> None:
                score_batch(sols, gts, "math", pool=pool, progress=False)

            rows[f"pool, {workers} worker{'s' if workers > 1 else ''}"] = _rate(run, warm_set, timed_sets)
            timeouts[workers] = pool.stats().timeouts

    # Same items, all three graders: do they agree?
    with GradingPool(num_workers=2, timeout=args.timeout) as pool:
        pooled = [r["acc"] for r in score_batch(solutions, truths, "math", pool=pool, progress=False)]
    ours = in_process_pipeline(solutions, truths)
    ref = direct_math_verify(solutions, truths)

    load_after = os.getloadavg()
    print(f"\n{'configuration':<24}{'checks/s':>12}")
    for name, rate in rows.items():
        print(f"{name:<24}{rate:>12.1f}")
    scaling = rows["pool, 2 workers"] / rows["pool, 1 worker"]
    overhead_pipeline = rows["in-process pipeline"] / rows["pool, 1 worker"] - 1
    overhead_direct = rows["math-verify direct"] / rows["pool, 1 worker"] - 1
    print(f"\nscaling 1 -> 2 workers: {scaling:.2f}x (target >= 1.7x on 2 otherwise idle cores)")
    print(f"pool overhead at 1 worker vs in-process pipeline: {overhead_pipeline:+.1%} (target < 20%)")
    print(f"pool overhead at 1 worker vs math-verify direct: {overhead_direct:+.1%} (negative: pool is faster)")
    print(f"pool start-up (template process + workers): 1 worker {startup[1]:.2f} s, 2 workers {startup[2]:.2f} s")
    agree = sum(a == b for a, b in zip(pooled, ours, strict=True))
    agree_ref = sum(a == b for a, b in zip(pooled, ref, strict=True))
    print(f"verdicts: pool == in-process on {agree}/{args.n}, pool == math-verify direct on {agree_ref}/{args.n}")
    print(f"accepted as correct: pool {sum(pooled)}/{args.n}, math-verify direct {sum(ref)}/{args.n}")
    print(f"timeouts: 1 worker {timeouts[1]}, 2 workers {timeouts[2]}")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "rates": rows,
                    "scaling": scaling,
                    "overhead_vs_pipeline": overhead_pipeline,
                    "overhead_vs_direct": overhead_direct,
                    "startup_s": startup,
                    "load_before": load_before,
                    "load_after": load_after,
                    "args": vars(args),
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
