"""Pass@k speed: vectorised estimator vs a per-problem loop vs verl's bootstrap best@k, in one run.

Data: P problems x n samples (default 5,000 x 256), per-problem success rates drawn from a Beta
distribution, correct counts binomial. Measured:

- ours: ``verl_agrae.eval.metrics.pass_at_k_curve`` for every k in 1..n (median of repeats).
- (a) the Chen et al. (2021) reference estimator ``1 - prod(1 - k / arange(n - c + 1, n + 1))``
  (numpy inside a Python loop over problems and k, as evaluation scripts usually run it), on all
  problems and all k.
- (b) verl's ``process_validation_metrics`` (``verl/trainer/ppo/metric_utils.py``), which bootstraps
  best@k for k in {2, 4, ..., n} with 1,000 with-replacement draws per problem and k. It is too slow
  for all problems: it runs on a subsample and the time is EXTRAPOLATED linearly to P problems
  (clearly labelled). Its best@k is also compared with the unbiased Pass@k on the subsample.

Targets (issue 6): ours under 0.1 s for all k, and at least 50x faster than (a).

Usage::

    python benchmarks/passk_bench.py [--problems 5000] [--n 256] [--verl-problems 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from verl_agrae.eval.metrics import pass_at_k_curve


def chen_reference(n: int, c: int, k: int) -> float:
    """The per-problem product form as published with HumanEval (numpy on one problem)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=5000)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7, help="timing repeats for the vectorised estimator")
    ap.add_argument("--verl-problems", type=int, default=20, help="subsample for verl's process_validation_metrics")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    p_true = rng.beta(0.5, 1.5, size=args.problems)
    n = np.full(args.problems, args.n, dtype=np.int64)
    c = rng.binomial(args.n, p_true).astype(np.int64)
    ks = list(range(1, args.n + 1))

    pass_at_k_curve(n, c, ks)  # warm-up (imports, allocator)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = pass_at_k_curve(n, c, ks)
        times.append(time.perf_counter() - t0)
    t_ours = float(np.median(times))

    t0 = time.perf_counter()
    ref = np.empty_like(ours)
    for i in range(args.problems):
        ni, ci = int(n[i]), int(c[i])
        for j, k in enumerate(ks):
            ref[j, i] = chen_reference(ni, ci, k)
    t_loop = time.perf_counter() - t0
    max_abs_diff = float(np.max(np.abs(ours - ref)))

    from verl.trainer.ppo.metric_utils import process_validation_metrics

    m = min(args.verl_problems, args.problems)
    sources, uids, accs = [], [], []
    for i in range(m):
        correct = np.zeros(args.n)
        correct[: c[i]] = 1.0
        rng.shuffle(correct)
        sources += ["bench"] * args.n
        uids += [f"q{i}"] * args.n
        accs += correct.tolist()
    t0 = time.perf_counter()
    verl_out = process_validation_metrics(sources, uids, {"acc": accs}, seed=args.seed)
    t_verl_sub = time.perf_counter() - t0
    t_verl_full = t_verl_sub * args.problems / m
    verl_ks = sorted(
        {int(key.split("@")[1].split("/")[0]) for key in verl_out["bench"]["acc"] if key.startswith("best@")}
    )
    bias = {}
    for k in verl_ks:
        unbiased = float(ours[k - 1, :m].mean())
        bias[k] = (float(verl_out["bench"]["acc"][f"best@{k}/mean"]), unbiased)

    print(f"data: {args.problems} problems x n={args.n}, Pass@k for k = 1..{args.n} ({len(ks)} values)")
    print(f"ours (vectorised, median of {args.repeats}):      {t_ours * 1e3:9.1f} ms   target < 100 ms")
    print(
        f"(a) per-problem loop, Chen et al. product: {t_loop * 1e3:9.1f} ms   ours is {t_loop / t_ours:,.0f}x faster "
        f"(target >= 50x); max |diff| = {max_abs_diff:.2e}"
    )
    print(
        f"(b) verl process_validation_metrics: {t_verl_sub:.2f} s on {m} problems -> EXTRAPOLATED "
        f"{t_verl_full:,.0f} s for {args.problems} problems, and only k in {verl_ks}; "
        f"ours is {t_verl_full / t_ours:,.0f}x faster"
    )
    print(f"    verl best@k (bootstrap with replacement) vs unbiased Pass@k, mean over the {m} problems:")
    for k, (b, u) in bias.items():
        print(f"    k={k:>4}: best@k {100 * b:6.2f}   Pass@k {100 * u:6.2f}   diff {100 * (b - u):+6.2f} points")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "problems": args.problems,
                    "n": args.n,
                    "ours_s": t_ours,
                    "loop_s": t_loop,
                    "speedup_vs_loop": t_loop / t_ours,
                    "verl_subsample_problems": m,
                    "verl_subsample_s": t_verl_sub,
                    "verl_extrapolated_s": t_verl_full,
                    "max_abs_diff_vs_loop": max_abs_diff,
                    "verl_best_vs_passk": {str(k): v for k, v in bias.items()},
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
