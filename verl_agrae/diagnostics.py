"""One batch's A-GRAE picture as a flat dict of floats, ready for verl's metric loggers.

Pure functions of sequence-level tensors, so they describe any estimator's advantages (A-GRAE, or GRPO
for comparison). Keys (all prefixed ``agrae/``):

- ``mu``: mean success rate the estimator used; ``suppression``: the factor it applied to positive advantages;
- ``adv_pos_sum`` / ``adv_neg_sum``: summed positive advantage and summed |negative| advantage over valid rows;
- ``pos_to_neg_ratio``: ``adv_pos_sum / adv_neg_sum`` (1.0 for GRPO-like symmetric batches; below 1 while
  A-GRAE suppresses correct responses); 1.0 when both sums are 0, capped at 1e6 when only the negative
  side is 0; ``adv_balance``: ``(pos - neg) / (pos + neg)`` in [-1, 1] (0 when both are 0);
- ``adv_abs_mean`` / ``adv_abs_max``: update scale (A-GRAE's ``w(p, mu)`` rescales advantages; watch it
  against PPO and gradient clipping);
- ``groups_all_solved`` / ``groups_all_failed`` / ``groups_mixed``: shares of valid groups with p = 1, p = 0
  and in between (all-solved and all-failed groups give zero advantage);
- ``abs_adv_p{lo}_{hi}``: mean |advantage| of rows whose group success rate p lies in the bin [lo, hi)
  (last bin closed), 0 for an empty bin; shows where the update's weight goes (easy vs hard prompts).
"""

from __future__ import annotations

import torch

from verl_agrae.advantage import AgraeResult, group_mean_std

__all__ = ["batch_diagnostics", "diagnostics_from_result", "PREFIX"]

PREFIX = "agrae/"
_RATIO_CAP = 1e6


def batch_diagnostics(
    advantages: torch.Tensor,
    success: torch.Tensor,
    group_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    mu: float | None = None,
    suppression: float | None = None,
    num_bins: int = 4,
) -> dict[str, float]:
    """Diagnostics of one batch.

    Args:
        advantages: ``(bs,)`` sequence-level advantages.
        success: ``(bs,)`` per-response success in [0, 1].
        group_ids: ``(bs,)`` int64 dense group ids.
        valid: ``(bs,)`` bool, non-padding rows.
        mu: the batch mean success rate the estimator used; computed from ``success`` when None.
        suppression: the suppression factor the estimator applied (reported as ``agrae/suppression`` when given;
            never recomputed here).
        num_bins: number of equal-width success-rate bins for the ``abs_adv_p*`` keys.

    Returns:
        Flat ``dict[str, float]`` with ``agrae/`` keys (see the module docstring).
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    bs = advantages.shape[0]
    if not (success.shape[0] == group_ids.shape[0] == valid.shape[0] == bs):
        raise ValueError("advantages, success, group_ids and valid must all have shape (bs,)")
    adv = torch.where(valid, advantages.double(), torch.zeros((), dtype=torch.float64))
    num_groups = int(group_ids.max()) + 1 if bs else 0
    count, p_group, _ = group_mean_std(success.double(), group_ids, valid, num_groups)
    present = count > 0
    p = p_group[present]
    n_groups = max(int(present.sum()), 1)
    batch_mu = float(p.mean()) if p.numel() else 0.0
    if mu is None:
        mu = batch_mu

    pos = float(adv.clamp(min=0).sum())
    neg = float((-adv).clamp(min=0).sum())
    if neg > 0:
        ratio = min(pos / neg, _RATIO_CAP)
    else:
        ratio = 1.0 if pos == 0 else _RATIO_CAP
    absv = adv.abs()[valid]
    out = {
        "mu": float(mu),
        "adv_pos_sum": pos,
        "adv_neg_sum": neg,
        "pos_to_neg_ratio": ratio,
        "adv_balance": (pos - neg) / (pos + neg) if pos + neg > 0 else 0.0,
        "adv_abs_mean": float(absv.mean()) if absv.numel() else 0.0,
        "adv_abs_max": float(absv.max()) if absv.numel() else 0.0,
        "groups_all_solved": float((p == 1).sum()) / n_groups,
        "groups_all_failed": float((p == 0).sum()) / n_groups,
        "groups_mixed": float(((p > 0) & (p < 1)).sum()) / n_groups,
    }
    if suppression is not None:
        out["suppression"] = float(suppression)

    # Success-rate bins of each valid row's group: bin b covers [b/B, (b+1)/B), the last bin includes 1.
    p_row = p_group[group_ids]
    bins = (p_row * num_bins).floor().long().clamp(max=num_bins - 1)
    w = valid.double()
    n_bin = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, w)
    s_bin = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, adv.abs() * w)
    mean_bin = s_bin / n_bin.clamp(min=1.0)
    for b in range(num_bins):  # loop over a handful of bins, not rows
        out[f"abs_adv_p{b / num_bins:.2f}_{(b + 1) / num_bins:.2f}"] = float(mean_bin[b])
    return {PREFIX + k: v for k, v in out.items()}


def diagnostics_from_result(result: AgraeResult, num_bins: int = 4) -> dict[str, float]:
    """:func:`batch_diagnostics` of an :class:`~verl_agrae.advantage.AgraeResult`, with the mu it used.

    Also reports ``agrae/mu_batch`` (the batch's own mean success rate; differs from ``agrae/mu`` when groups
    dropped by dynamic sampling were counted) and ``agrae/base_adv_abs_mean`` (the GRAE scale before the A-GRAE
    terms) for comparison.
    """
    out = batch_diagnostics(
        result.advantages,
        result.success,
        result.group_ids,
        result.valid,
        mu=result.mu,
        suppression=result.suppression,
        num_bins=num_bins,
    )
    out[PREFIX + "mu_batch"] = float(result.mu_batch)
    base = result.base_advantages[result.valid].abs()
    out[PREFIX + "base_adv_abs_mean"] = float(base.mean()) if base.numel() else 0.0
    return out
