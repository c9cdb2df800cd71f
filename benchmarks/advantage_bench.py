"""Time A-GRAE against verl's `grpo` (per-row loop) and `grpo_vectorized` on identical inputs.

Inputs mimic what verl's trainer passes: a numpy object array of uid strings, binary outcome rewards on the
last response token, a float response mask with random lengths. Each cell reports the median of several
runs and the ratios agrae/grpo_vectorized (target <= 1.0 at 8192 x 1024) and grpo/agrae (target >= 3).

    python benchmarks/advantage_bench.py            # full grid (a few minutes on 2 cores)
    python benchmarks/advantage_bench.py --quick    # small grid, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid

import numpy as np
import torch


def make_inputs(rows: int, length: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    uids = np.array([str(uuid.UUID(int=k // n + 1)) for k in range(rows)], dtype=object)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # int64, as verl's agent loop builds it
    tlr = torch.zeros(rows, length)
    tlr[torch.arange(rows), lengths - 1] = torch.randint(0, 2, (rows,), generator=g).float()
    return tlr, mask, uids


def median_times(fns: dict, repeats: dict[str, int]) -> dict[str, float]:
    """Median wall time of each function; runs are interleaved so drift in machine load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r < repeats[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid for a smoke run")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import verl  # noqa: F401  (loads our plugin)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    estimators = {name: get_adv_estimator_fn(name) for name in ("agrae", "grpo_vectorized", "grpo")}
    rows_grid = [512, 2048] if args.quick else [512, 2048, 8192, 32768]
    lengths = [1, 128] if args.quick else [1, 1024]
    config = {"adv_estimator": "agrae", "norm_adv_by_std_in_grpo": True, "agrae": {}}
    torch.set_num_threads(torch.get_num_threads())
    results = []
    header = f"{'n':>3} {'rows':>6} {'L':>5} | {'agrae ms':>9} {'vec ms':>9} {'grpo ms':>9} | agrae/vec  grpo/agrae"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(header)
    print("-" * len(header))
    for n in (8, 16):
        for rows in rows_grid:
            for length in lengths:
                tlr, mask, uids = make_inputs(rows, length, n)
                calls, reps = {}, {}
                for name, fn in estimators.items():
                    kwargs = dict(token_level_rewards=tlr, response_mask=mask, index=uids)
                    if name == "agrae":
                        kwargs["config"] = config
                    calls[name] = lambda fn=fn, kw=kwargs: fn(**kw)
                    # verl's per-row `grpo` is slow at scale: fewer repeats keep the grid within minutes
                    reps[name] = max(1, args.repeats // 3) if name == "grpo" and rows >= 8192 else args.repeats
                t = median_times(calls, reps)
                r_vec = t["agrae"] / t["grpo_vectorized"]
                r_loop = t["grpo"] / t["agrae"]
                print(
                    f"{n:>3} {rows:>6} {length:>5} | {t['agrae'] * 1e3:>9.2f} {t['grpo_vectorized'] * 1e3:>9.2f} "
                    f"{t['grpo'] * 1e3:>9.2f} | {r_vec:>9.2f} {r_loop:>10.1f}"
                )
                results.append({"n": n, "rows": rows, "length": length, **{f"{k}_s": v for k, v in t.items()}})
    target = [r for r in results if r["rows"] == 8192 and r["length"] == 1024]
    for r in target:
        ok_vec = r["agrae_s"] <= r["grpo_vectorized_s"]
        ok_loop = r["grpo_s"] >= 3 * r["agrae_s"]
        print(
            f"target n={r['n']} 8192x1024: agrae/grpo_vectorized = {r['agrae_s'] / r['grpo_vectorized_s']:.2f} "
            f"({'met' if ok_vec else 'MISSED'}, <= 1.0), grpo/agrae = {r['grpo_s'] / r['agrae_s']:.1f} "
            f"({'met' if ok_loop else 'MISSED'}, >= 3)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
