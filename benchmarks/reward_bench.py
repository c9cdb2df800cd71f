"""Throughput of the math reward: grading pools (ours, pebble's, a git revision's) vs math-verify in one process.

Usage (from the repository root, so that this tree's package is the one imported):
    PYTHONPATH=. python benchmarks/reward_bench.py [--n 400] [--repeats 3] [--mix realistic|symbolic]
        [--baseline main] [--no-pebble] [--no-probes] [--json out.json]

All configurations grade the same items in the same run:

- ``math-verify direct``: ``math_verify.parse`` + ``verify`` in this process on the full model output (the usual
  way to call it; its alarm-based timeouts work here because this is the main thread). No hard timeout.
- ``in-process pipeline``: our extraction + fast path + the same symbolic check as the workers, called directly
  in this process. No hard timeout. The like-for-like baseline for the pool's own cost.
- ``pool, 1 worker`` / ``pool, 2 workers``: ``score_batch`` through a :class:`GradingPool` (hard timeout).
- ``pebble pool, ...``: the same through pebble's ``ProcessPool`` over a forkserver (``pebble_pool.py``; needs
  ``pip install pebble``).
- ``<baseline> pool, ...``: the grader (extraction and pool) as it is at git revision ``--baseline``, exported to a
  temporary directory and run there in a fresh interpreter: "before" and "after" in one run.

Printed: checks/s (median over repeats), scaling 2 vs 1 worker (target >= 1.7x on 2 free cores), pool overhead at
1 worker against both baselines (target < 20%), this pool's throughput over pebble's and the baseline's, the
guarantee probes of both pool kinds (stopped worker, killed workers, threads, signal handlers), and the load
average, since other processes on the machine change every figure. Pool start-up time is excluded from throughput
and printed separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

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
    from verl_agrae.reward import verify

    out = []
    for s, t in zip(solutions, truths, strict=True):
        item = _prepare("math", s, t)
        if item.acc is not None:
            out.append(item.acc)
        elif getattr(item, "text", None) is not None:  # no explicit answer: math-verify extracts (new code only)
            out.append(verify.answer_in_text(item.text, item.truth)[0])
        else:
            out.append(verify.math_equal(item.pred, item.truth))
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


def _pool_rates(make_pool: Callable[[int], Any], warm_set: tuple, timed_sets: list[tuple]) -> dict[str, Any]:
    """checks/s of ``score_batch`` through pools of 1 and 2 workers (fresh workers each), start-up and timeouts."""
    out: dict[str, Any] = {}
    for workers in (1, 2):
        start = time.perf_counter()
        pool = make_pool(workers)
        try:
            pool.start()
            out[f"startup_{workers}"] = time.perf_counter() - start

            def run(sols: list[str], gts: list[str], pool: Any = pool) -> None:
                score_batch(sols, gts, "math", pool=pool, progress=False)

            out[workers] = _rate(run, warm_set, timed_sets)
            out[f"timeouts_{workers}"] = pool.stats().timeouts
        finally:
            pool.close()
    return out


def _baseline_rates(ref: str, args: argparse.Namespace) -> dict[str, Any]:
    """Rates of the grader as it is at git revision ``ref`` (extraction and pool), on the same items.

    The revision's ``verl_agrae/reward`` is exported to a temporary directory and this script runs there in a fresh
    interpreter with that directory first on ``PYTHONPATH``, so the old code grades (its pool starts its workers
    from the same directory).
    """
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="reward_bench_baseline_") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", ref, "verl_agrae/__init__.py", "verl_agrae/reward"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=tmp)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--pool-rates-only"]
        cmd += ["--n", str(args.n), "--repeats", str(args.repeats), "--mix", args.mix]
        cmd += ["--timeout", str(args.timeout), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"baseline run at {ref!r} failed:\n{proc.stderr[-3000:]}")
        return {int(k) if k.isdigit() else k: v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def _wait_result(fn: Callable[[], Any], limit_s: float) -> tuple[Any, float]:
    """``(result or None if still running after limit_s, seconds)``: fn runs on a daemon thread (it may hang)."""
    box: list[Any] = []
    start = time.monotonic()
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(limit_s)
    return (box[0] if box else None), time.monotonic() - start


_WATCHED = (signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
_TOWER = r"9^{9^{9^{9}}}"  # runs for ever without a timeout
_STUCK_LIMIT_S = 15.0


def _describe(r: Any, seconds: float) -> str:
    if r is None:
        return f"no result after {seconds:.0f} s (hung)"
    if isinstance(r, BaseException):
        return f"raised {type(r).__name__}: {r} ({seconds:.2f} s)"
    verdict = "timeout" if r.timeout else "error" if r.error else "correct" if r.equal else "not equal"
    return f"{verdict} after {seconds:.2f} s"


def _attempt(fn: Callable[[], Any], limit_s: float) -> tuple[Any, float]:
    def guarded() -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - reported as the probe's outcome
            return exc

    return _wait_result(guarded, limit_s)


def _probe_stuck(pool: Any) -> str:
    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGSTOP)  # a worker that can run no timer of its own
    r, t = _attempt(lambda: pool.check("0.5", r"\frac{1}{2}"), _STUCK_LIMIT_S)
    _kill(victim)  # if the pool has not already
    out = _describe(r, t)
    r, t = _attempt(lambda: pool.check("0.5", r"\frac{1}{2}", timeout=60.0), 90.0)
    return f"{out}; then: {_describe(r, t)}"


def _probe_idle_killed(pool: Any) -> str:
    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGKILL)  # an idle worker lost (OOM killer, operator)
    _wait_gone(victim)
    r, t = _attempt(lambda: pool.check("1/4", "0.25", timeout=60.0), 90.0)
    return _describe(r, t)


def _probe_killed_mid_check(pool: Any) -> str:
    victim = pool.worker_pids[0]
    # The power tower keeps the worker busy until its soft timer (90% of 3 s); the kill lands half a second in. A pool
    # that retries the item on a replacement ends it as a timeout within the 3 s, counting one crash.
    threading.Timer(0.5, _kill, (victim,)).start()
    r, t = _attempt(lambda: pool.check(_TOWER, "1", timeout=3.0), 30.0)
    return _describe(r, t)


def _probe_thread(pool: Any) -> str:
    r, t = _attempt(lambda: pool.check("1/4", "0.25", timeout=60.0), 90.0)
    return _describe(r, t)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, AttributeError, OSError):
        return
    try:
        select.select([fd], [], [], 10.0)
    finally:
        os.close(fd)


def probe_guarantees(make_pool: Callable[[int, float], Any], timeout: float) -> dict[str, str]:
    """The hand-written pool's tested guarantees, probed on a pool kind (each probe on a fresh 1-worker pool)."""
    probes: dict[str, Callable[[Any], str]] = {
        "power tower, 1 s limit": lambda p: _describe(*_attempt(lambda: p.check(_TOWER, "1"), 30.0)),
        "stopped worker, 1 s limit": _probe_stuck,
        "idle worker killed, next check": _probe_idle_killed,
        "worker killed mid-check": _probe_killed_mid_check,
        "check from a non-main thread": _probe_thread,
    }
    res: dict[str, str] = {}
    handlers = {sig: signal.getsignal(sig) for sig in _WATCHED}
    for name, probe in probes.items():
        pool = make_pool(1, timeout)
        try:
            pool.start()
            res[name] = probe(pool)
            res[name] += f" [{pool.stats()}]" if name != "check from a non-main thread" else ""
        finally:
            pool.close()
    res["caller signal handlers untouched"] = str({sig: signal.getsignal(sig) for sig in _WATCHED} == handlers)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="items per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes per configuration (median reported)")
    parser.add_argument("--mix", choices=["realistic", "symbolic"], default="realistic")
    parser.add_argument("--timeout", type=float, default=5.0, help="pool timeout per item, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default="main", help="git revision graded as 'before' ('' to skip)")
    parser.add_argument("--no-pebble", action="store_true", help="skip the pebble ProcessPool candidate")
    parser.add_argument("--no-probes", action="store_true", help="skip the guarantee probes")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--pool-rates-only", action="store_true", help=argparse.SUPPRESS)  # the baseline's run
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    # Every configuration grades the same sequence (a warm-up set, then one fresh set per timed pass) starting from
    # a fresh interpreter: sympy's cache and the LaTeX parser's (ANTLR) DFA cache fill up with use, so a
    # configuration run after another one in the same process would be measured with the other's warm caches.
    # The in-process configurations therefore run in a fresh spawned process each, and each pool has new workers.
    warm_set = make_items(args.n, args.seed + 1000, args.mix)
    timed_sets = [make_items(args.n, args.seed + k, args.mix) for k in range(1, args.repeats + 1)]
    if args.pool_rates_only:
        rates = _pool_rates(lambda w: GradingPool(num_workers=w, timeout=args.timeout), warm_set, timed_sets)
        print(json.dumps({str(k): v for k, v in rates.items()}))
        return 0

    solutions, truths = make_items(args.n, args.seed, args.mix)
    symbolic = sum(_prepare("math", s, t).acc is None for s, t in zip(solutions, truths, strict=True))
    load_before = os.getloadavg()
    print(f"items: {args.n} per pass ({args.mix} mix, {symbolic} need a worker), repeats: {args.repeats}")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cpus: {os.cpu_count()} ({usable} usable by this process), load average: {load_before[0]:.2f}")

    rows: dict[str, float] = {}
    spawn = multiprocessing.get_context("spawn")
    for name in ("math-verify direct", "in-process pipeline"):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as ex:
            rows[name] = ex.submit(_measure_in_fresh_process, name, warm_set, timed_sets).result()

    pools: dict[str, dict[str, Any]] = {}
    pools["pool"] = _pool_rates(lambda w: GradingPool(num_workers=w, timeout=args.timeout), warm_set, timed_sets)
    pebble = None
    if not args.no_pebble:
        try:
            from pebble_pool import PebbleGradingPool as pebble
        except ImportError as exc:
            print(f"pebble candidate skipped: {exc} (pip install pebble)")
    if pebble is not None:
        pools["pebble pool"] = _pool_rates(lambda w: pebble(num_workers=w, timeout=args.timeout), warm_set, timed_sets)
    if args.baseline:
        pools[f"{args.baseline} pool"] = _baseline_rates(args.baseline, args)
    for kind, rates in pools.items():
        for workers in (1, 2):
            rows[f"{kind}, {workers} worker{'s' if workers > 1 else ''}"] = rates[workers]

    # Same items, all three graders: do they agree?
    with GradingPool(num_workers=2, timeout=args.timeout) as pool:
        pooled = [r["acc"] for r in score_batch(solutions, truths, "math", pool=pool, progress=False)]
    ours = in_process_pipeline(solutions, truths)
    ref = direct_math_verify(solutions, truths)

    probes: dict[str, dict[str, str]] = {}
    if not args.no_probes:
        probes["hand-written"] = probe_guarantees(lambda w, t: GradingPool(num_workers=w, timeout=t), 1.0)
        if pebble is not None:
            probes["pebble"] = probe_guarantees(lambda w, t: pebble(num_workers=w, timeout=t), 1.0)

    load_after = os.getloadavg()
    print(f"\n{'configuration':<30}{'checks/s':>12}")
    for name, rate in rows.items():
        print(f"{name:<30}{rate:>12.1f}")
    figures: dict[str, float] = {
        "scaling": rows["pool, 2 workers"] / rows["pool, 1 worker"],
        "overhead_vs_pipeline": rows["in-process pipeline"] / rows["pool, 1 worker"] - 1,
        "overhead_vs_direct": rows["math-verify direct"] / rows["pool, 1 worker"] - 1,
    }
    print(f"\nscaling 1 -> 2 workers: {figures['scaling']:.2f}x (target >= 1.7x on 2 otherwise idle cores)")
    print(f"pool overhead at 1 worker vs in-process pipeline: {figures['overhead_vs_pipeline']:+.1%} (target < 20%)")
    print(f"pool overhead at 1 worker vs math-verify direct: {figures['overhead_vs_direct']:+.1%} (negative: faster)")
    for kind in pools:
        if kind == "pool":
            continue
        for workers in (1, 2):
            key = f"pool / {kind}, {workers} worker{'s' if workers > 1 else ''}"
            figures[key] = pools["pool"][workers] / pools[kind][workers]
            print(f"throughput ratio {key}: {figures[key]:.2f}x (> 1: this tree's pool is faster)")
    for kind, rates in pools.items():
        print(
            f"{kind} start-up: 1 worker {rates['startup_1']:.2f} s, 2 workers {rates['startup_2']:.2f} s; "
            f"timeouts {rates['timeouts_1']} / {rates['timeouts_2']}"
        )
    agree = sum(a == b for a, b in zip(pooled, ours, strict=True))
    agree_ref = sum(a == b for a, b in zip(pooled, ref, strict=True))
    print(f"verdicts: pool == in-process on {agree}/{args.n}, pool == math-verify direct on {agree_ref}/{args.n}")
    print(f"accepted as correct: pool {sum(pooled)}/{args.n}, math-verify direct {sum(ref)}/{args.n}")
    for kind, res in probes.items():
        print(f"\nguarantee probes, {kind} pool (1 worker, 1 s timeout):")
        for key, value in res.items():
            print(f"  {key:<34}{value}")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "rates": rows,
                    "figures": figures,
                    "pools": {k: {str(n): v for n, v in r.items()} for k, r in pools.items()},
                    "probes": probes,
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
