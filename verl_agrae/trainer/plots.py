"""PNG plots of a run's merged metrics, one figure per theme (matplotlib, Agg backend)."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ENTROPY_KEYS", "PLOT_GROUPS", "plot_metrics"]

#: Policy entropy, first present wins: ``actor/entropy`` from verl's old-log-prob pass, ``actor/entropy_loss`` from
#: the update when bypass mode skips that pass (docs/cpu.md).
ENTROPY_KEYS = ("actor/entropy", "actor/entropy_loss")

#: figure name -> (title, glob patterns of metric keys)
PLOT_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "reward": ("Training reward", ("critic/score/mean", "critic/rewards/mean")),
    "accuracy": ("Accuracy", ("val-core/*/acc/mean@*", "val-core/*/reward/mean@*", "train/acc*")),
    "response_length": ("Response length (tokens)", ("response_length/mean", "response_length/max")),
    "entropy": ("Policy entropy", ENTROPY_KEYS),
    "kl": ("KL to the reference policy", ("actor/kl_loss", "actor/ppo_kl", "actor/kl_coef")),
    "log_prob_gap": (
        "Rollout vs actor log-prob gap",
        ("training/rollout_probs_diff_max", "training/rollout_probs_diff_mean"),
    ),
    "agrae_balance": (
        "A-GRAE: advantage balance",
        ("agrae/mu", "agrae/suppression", "agrae/adv_balance", "agrae/groups_*"),
    ),
    "agrae_scale": ("A-GRAE: advantage scale", ("agrae/adv_abs_mean", "agrae/abs_adv_p*", "agrae/base_adv_abs_mean")),
    "timing": ("Step time breakdown (s)", ("timing_s/*",)),
}


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(int(row["step"]))
            ys.append(float(value))
    return xs, ys


def plot_metrics(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write one PNG per :data:`PLOT_GROUPS` entry that has data.

    Args:
        rows: merged metrics, ``{"step": s, key: value, ...}`` per step.
        out_dir: destination folder.

    Returns:
        Paths of the written PNG files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r if k != "step"})
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, patterns) in PLOT_GROUPS.items():
        chosen = [k for k in keys if any(fnmatch.fnmatch(k, p) for p in patterns)]
        if name == "timing":  # the biggest phases only, or the legend drowns the plot
            totals = {k: sum(_series(rows, k)[1]) for k in chosen}
            chosen = sorted(chosen, key=lambda k: -totals[k])[:8]
        series = [(k, *_series(rows, k)) for k in chosen]
        series = [s for s in series if s[1]]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, xs, ys in series:
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
