"""Report: Pass@k / mean@n / maj@k with bootstrap CIs per cell, paired comparisons, tables, plots, JSON.

Files written to the report directory:

- ``summary.md``: one Pass@k table per benchmark and sampling setting (rows: runs; cells:
  ``value [low, high]`` in percent), then grading counts, then paired comparisons.
- ``passk.csv``: long format, one row per (run, benchmark, sampling, metric, k).
- ``comparisons.csv``: paired comparisons (difference, CI, p-value, wins/losses).
- ``per_problem/<cell>.csv``: per-problem n, c, mean@n, Pass@k and maj@k.
- ``passk_<benchmark>__<sampling>.png``: Pass@k curves, log2 k axis, one line per run, CI bands.
- ``summary.json``: everything above in one machine-readable file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from verl_agrae.atomic import atomic_target, atomic_write_text
from verl_agrae.eval.cell import CellResults, load_cell_results
from verl_agrae.eval.metrics import (
    PairedResult,
    bootstrap_ci,
    default_ks,
    maj_at_k,
    paired_comparison,
    pass_at_k_curve,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellRef:
    """Where one cell's outputs live and what it is."""

    run: str
    benchmark: str
    sampling: str
    cell_dir: str

    @property
    def cell_id(self) -> str:
        """Directory-safe identifier ``run__benchmark__sampling``."""
        return f"{self.run}__{self.benchmark}__{self.sampling}"


@dataclass
class CellMetrics:
    """Metrics of one cell.

    Attributes:
        ks: k values evaluated.
        pass_k: (K, P) per-problem Pass@k.
        maj_k: (K, P) per-problem maj@k (None when not computed).
        mean_n: (P,) per-problem mean correctness over all samples.
        summary: aggregated values with CIs (JSON-ready).
    """

    ks: list[int]
    pass_k: np.ndarray
    maj_k: np.ndarray | None
    mean_n: np.ndarray
    summary: dict[str, Any]


def compute_cell_metrics(
    res: CellResults,
    *,
    ks: list[int] | None = None,
    num_boot: int = 2000,
    seed: int = 0,
    maj: bool = True,
    maj_draws: int = 256,
) -> CellMetrics:
    """Pass@k, mean@n, maj@k per problem and their bootstrap means/CIs over problems.

    Problems with fewer than k samples get Pass@n_i (the documented ``short="clip"`` rule of
    :func:`verl_agrae.eval.metrics.pass_at_k`); how many did is reported per k as ``short``.
    """
    n_max = int(res.n.max()) if res.n.size else 0
    ks = ks or default_ks(n_max)
    pk = pass_at_k_curve(res.n, res.c, ks, short="clip")
    mean_n = np.where(res.n > 0, res.c / np.maximum(res.n, 1), 0.0)
    pm, plo, phi = bootstrap_ci(pk, num_boot=num_boot, seed=seed)
    mm, mlo, mhi = bootstrap_ci(mean_n, num_boot=num_boot, seed=seed)
    summary: dict[str, Any] = {
        "num_problems": len(res.uids),
        "num_samples": res.num_samples,
        "n_min": int(res.n.min()) if res.n.size else 0,
        "n_max": n_max,
        "timeouts": res.timeouts,
        "truncated": res.truncated,
        "no_answer": sum(a is None for per in res.answers for a in per),
        "mean_tokens": None if math.isnan(res.mean_tokens) else res.mean_tokens,
        "mean@n": {"value": float(mm), "ci_low": float(mlo), "ci_high": float(mhi)},
        "pass@k": {
            str(k): {
                "value": float(pm[i]),
                "ci_low": float(plo[i]),
                "ci_high": float(phi[i]),
                "short": int((res.n < k).sum()),
            }
            for i, k in enumerate(ks)
        },
    }
    mk = None
    if maj:
        mk = maj_at_k(res.answers, res.correct, ks, num_draws=maj_draws, seed=seed)
        jm, jlo, jhi = bootstrap_ci(mk, num_boot=num_boot, seed=seed)
        summary["maj@k"] = {
            str(k): {"value": float(jm[i]), "ci_low": float(jlo[i]), "ci_high": float(jhi[i])} for i, k in enumerate(ks)
        }
    return CellMetrics(ks=list(ks), pass_k=pk, maj_k=mk, mean_n=mean_n, summary=summary)


def per_problem_table(res: CellResults, m: CellMetrics) -> pd.DataFrame:
    """One row per problem: uid, n, c, mean@n, pass@k..., maj@k..."""
    cols: dict[str, Any] = {"uid": res.uids, "n": res.n, "c": res.c, "mean@n": m.mean_n}
    for i, k in enumerate(m.ks):
        cols[f"pass@{k}"] = m.pass_k[i]
    if m.maj_k is not None:
        for i, k in enumerate(m.ks):
            cols[f"maj@{k}"] = m.maj_k[i]
    return pd.DataFrame(cols)


def _fmt(v: dict[str, float] | None) -> str:
    if v is None:
        return ""
    return f"{100 * v['value']:.1f} [{100 * v['ci_low']:.1f}, {100 * v['ci_high']:.1f}]"


def _plot(group: list[tuple[CellRef, CellMetrics]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for ref, m in group:
        ks = np.array(m.ks)
        vals = [m.summary["pass@k"][str(k)] for k in m.ks]
        y = np.array([v["value"] for v in vals]) * 100
        lo = np.array([v["ci_low"] for v in vals]) * 100
        hi = np.array([v["ci_high"] for v in vals]) * 100
        (line,) = ax.plot(ks, y, marker="o", markersize=3, label=ref.run)
        ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    top = max(float(np.max(m.summary["pass@k"][str(k)]["ci_high"])) for _, m in group for k in m.ks)
    ax.set_ylim(0, min(100.0, max(5.0, 100 * top + 5)))  # a 0-based axis; all-zero curves stay readable
    ax.set_xscale("log", base=2)
    all_ks = sorted({k for _, m in group for k in m.ks})
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.minorticks_off()
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    try:
        with atomic_target(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")  # the temporary name has no .png to infer it from
    finally:
        plt.close(fig)


def write_report(
    cells: list[CellRef],
    out_dir: str | os.PathLike[str],
    *,
    ks: list[int] | None = None,
    num_boot: int = 2000,
    seed: int = 0,
    maj: bool = True,
    maj_draws: int = 256,
    compare: list[tuple[str, str]] | None = None,
    num_perm: int = 10000,
) -> dict[str, Any]:
    """Compute every cell's metrics and write the report files (see the module docstring).

    Args:
        cells: the cells to include (each must be fully graded).
        out_dir: report directory.
        ks: k values (default: powers of two up to each cell's n).
        num_boot: bootstrap replicates for CIs.
        seed: seed for bootstrap, maj@k draws and permutations.
        maj: compute maj@k.
        maj_draws: random subsets per problem for maj@k.
        compare: pairs ``(run_a, run_b)`` compared on every shared benchmark and sampling setting;
            default: every run against the first one.
        num_perm: sign flips for the permutation p-value.

    Returns:
        The JSON summary (also written to ``summary.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    computed: dict[str, tuple[CellRef, CellResults, CellMetrics]] = {}
    for ref in cells:
        res = load_cell_results(ref.cell_dir)
        m = compute_cell_metrics(res, ks=ks, num_boot=num_boot, seed=seed, maj=maj, maj_draws=maj_draws)
        computed[ref.cell_id] = (ref, res, m)
        table = per_problem_table(res, m)
        atomic_write_text(out / "per_problem" / f"{ref.cell_id}.csv", table.to_csv(index=False, float_format="%.6g"))

    rows = []
    for ref, _, m in computed.values():
        base = {"run": ref.run, "benchmark": ref.benchmark, "sampling": ref.sampling}
        n_prob = m.summary["num_problems"]
        rows.append({**base, "metric": "mean@n", "k": m.summary["n_max"], **m.summary["mean@n"], "problems": n_prob})
        for metric in ("pass@k", "maj@k"):
            for k, v in m.summary.get(metric, {}).items():
                rows.append({**base, "metric": metric, "k": int(k), **v, "problems": n_prob})
    long = pd.DataFrame(rows)
    atomic_write_text(out / "passk.csv", long.to_csv(index=False, float_format="%.6g"))

    # Group cells by (benchmark, sampling): one table and one plot each.
    groups: dict[tuple[str, str], list[tuple[CellRef, CellMetrics]]] = {}
    for ref, _, m in computed.values():
        groups.setdefault((ref.benchmark, ref.sampling), []).append((ref, m))

    runs = list(dict.fromkeys(ref.run for ref in cells))
    pairs = compare if compare is not None else [(r, runs[0]) for r in runs[1:]]
    comparisons = []
    for a, b in pairs:
        for (bench, samp), _group in groups.items():
            ca = computed.get(CellRef(a, bench, samp, "").cell_id)
            cb = computed.get(CellRef(b, bench, samp, "").cell_id)
            if ca is None or cb is None:
                continue
            if ca[1].uids != cb[1].uids:
                raise ValueError(f"cannot pair {a} and {b} on {bench}/{samp}: their problem lists differ")
            shared_ks = [k for k in ca[2].ks if k in cb[2].ks]
            for k in shared_ks:
                r = paired_comparison(
                    ca[2].pass_k[ca[2].ks.index(k)],
                    cb[2].pass_k[cb[2].ks.index(k)],
                    num_boot=num_boot,
                    num_perm=num_perm,
                    seed=seed,
                )
                comparisons.append({"a": a, "b": b, "benchmark": bench, "sampling": samp, "k": k, **asdict(r)})
    comp_cols = ["a", "b", "benchmark", "sampling", "k"] + list(PairedResult.__dataclass_fields__)
    comp_table = pd.DataFrame(comparisons, columns=comp_cols)
    atomic_write_text(out / "comparisons.csv", comp_table.to_csv(index=False, float_format="%.6g"))

    md = ["# Pass@k report", ""]
    md.append(
        "Unbiased Pass@k (Chen et al. 2021) averaged over problems, in percent, with 95% bootstrap CIs over "
        "problems in brackets. Problems with fewer than k samples count as Pass@n (conservative)."
    )
    md.append("")
    plots = {}
    for (bench, samp), group in groups.items():
        all_ks = sorted({k for _, m in group for k in m.ks})
        md.append(f"## {bench} / {samp}")
        md.append("")
        header = ["run", "problems", "mean@n"] + [f"Pass@{k}" for k in all_ks]
        md.append("| " + " | ".join(header) + " |")
        md.append("|" + "---|" * len(header))
        for ref, m in group:
            cells_txt = [ref.run, str(m.summary["num_problems"]), _fmt(m.summary["mean@n"])]
            cells_txt += [_fmt(m.summary["pass@k"].get(str(k))) for k in all_ks]
            md.append("| " + " | ".join(cells_txt) + " |")
        if maj:
            md.append("")
            md.append("maj@k (majority vote over k samples; ties split evenly):")
            md.append("")
            header = ["run"] + [f"maj@{k}" for k in all_ks]
            md.append("| " + " | ".join(header) + " |")
            md.append("|" + "---|" * len(header))
            for ref, m in group:
                md.append("| " + " | ".join([ref.run] + [_fmt(m.summary["maj@k"].get(str(k))) for k in all_ks]) + " |")
        png = out / f"passk_{bench}__{samp}.png"
        _plot(group, f"{bench} ({samp})", png)
        plots[f"{bench}/{samp}"] = png.name
        md += ["", f"![Pass@k {bench} {samp}]({png.name})", ""]

    md += ["## Samples and grading", "", "| cell | samples | timeouts | truncated | no answer | mean tokens |"]
    md.append("|---|---|---|---|---|---|")
    for ref, _, m in computed.values():
        s = m.summary
        tok = "" if s["mean_tokens"] is None else f"{s['mean_tokens']:.1f}"
        md.append(
            f"| {ref.cell_id} | {s['num_samples']} | {s['timeouts']} | {s['truncated']} | {s['no_answer']} | {tok} |"
        )
    if comparisons:
        md += ["", "## Paired comparisons (A - B, Pass@k in points)", ""]
        md.append("| A | B | benchmark | sampling | k | diff | 95% CI | p (sign-flip) | wins/losses/ties |")
        md.append("|---|---|---|---|---|---|---|---|---|")
        for c in comparisons:
            md.append(
                f"| {c['a']} | {c['b']} | {c['benchmark']} | {c['sampling']} | {c['k']} | {100 * c['diff']:+.1f} | "
                f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] | {c['p_value']:.3g}"
                f"{' (exact)' if c['exact_p'] else ''} | {c['wins']}/{c['losses']}/{c['ties']} |"
            )
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")

    summary = {
        "cells": {
            cid: {"run": ref.run, "benchmark": ref.benchmark, "sampling": ref.sampling, **m.summary}
            for cid, (ref, _, m) in computed.items()
        },
        "comparisons": comparisons,
        "plots": plots,
        "settings": {"num_boot": num_boot, "seed": seed, "maj_draws": maj_draws, "num_perm": num_perm},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("report written to %s", out)
    return summary
