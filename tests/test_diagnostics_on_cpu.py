"""A-GRAE batch diagnostics against hand computation and a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl_agrae.advantage import agrae_sequence_advantage
from verl_agrae.diagnostics import batch_diagnostics, diagnostics_from_result


def _batch():
    # groups: solved (p=1), failed (p=0), easy (p=0.75), hard (p=0.25), then one padding row
    r = torch.tensor([1.0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0.0])[:, None]
    uids = np.array(["s", "s", "f", "f", "e", "e", "e", "e", "h", "h", "h", "h", "pad_0"], dtype=object)
    mask = torch.ones_like(r)
    mask[-1] = 0
    return r, mask, uids


def test_hand_computed_keys_and_values():
    r, mask, uids = _batch()
    res = agrae_sequence_advantage(r, mask, uids, alpha=1.0)
    d = diagnostics_from_result(res)
    assert all(k.startswith("agrae/") for k in d) and all(isinstance(v, float) for v in d.values())
    assert d["agrae/mu"] == pytest.approx(0.5)
    assert d["agrae/suppression"] == pytest.approx(0.5)
    assert d["agrae/groups_all_solved"] == pytest.approx(0.25)
    assert d["agrae/groups_all_failed"] == pytest.approx(0.25)
    assert d["agrae/groups_mixed"] == pytest.approx(0.5)
    a = res.advantages[:-1].double()
    pos, neg = float(a[a > 0].sum()), float(-a[a < 0].sum())
    assert d["agrae/adv_pos_sum"] == pytest.approx(pos) and d["agrae/adv_neg_sum"] == pytest.approx(neg)
    assert d["agrae/pos_to_neg_ratio"] == pytest.approx(pos / neg) and d["agrae/pos_to_neg_ratio"] < 1
    assert d["agrae/adv_balance"] == pytest.approx((pos - neg) / (pos + neg))
    # bins of 0.25: p=0 -> bin 0 (failed, |A| = 0), p=0.25 -> bin 1 (hard), p=0.75 -> bin 3 (easy), p=1 -> bin 3
    hard = float(a[8:12].abs().mean())
    easy_and_solved = float(torch.cat([a[4:8], a[0:2]]).abs().mean())
    assert d["agrae/abs_adv_p0.00_0.25"] == 0.0
    assert d["agrae/abs_adv_p0.25_0.50"] == pytest.approx(hard)
    assert d["agrae/abs_adv_p0.50_0.75"] == 0.0
    assert d["agrae/abs_adv_p0.75_1.00"] == pytest.approx(easy_and_solved)
    base = res.base_advantages[:-1].abs().mean()
    assert d["agrae/base_adv_abs_mean"] == pytest.approx(float(base))


def test_grpo_advantages_are_symmetric():
    r, mask, uids = _batch()
    grpo = agrae_sequence_advantage(r, mask, uids, difficulty_shift=False, suppress_correct=False)
    d = batch_diagnostics(grpo.advantages, grpo.success, grpo.group_ids, grpo.valid)
    assert d["agrae/pos_to_neg_ratio"] == pytest.approx(1.0)
    assert d["agrae/adv_balance"] == pytest.approx(0.0, abs=1e-7)
    assert "agrae/suppression" not in d


@pytest.mark.parametrize("seed", range(4))
def test_bins_match_a_plain_loop(seed):
    g = np.random.default_rng(seed)
    sizes = g.integers(1, 9, size=15)
    uids = np.array([f"g{k}" for k, n in enumerate(sizes) for _ in range(n)], dtype=object)
    bs = len(uids)
    adv = torch.tensor(g.normal(size=bs))
    success = torch.tensor(g.integers(0, 2, size=bs)).double()
    valid = torch.tensor(g.random(bs) > 0.1)
    ids = torch.tensor([int(u[1:]) for u in uids])
    d = batch_diagnostics(adv, success, ids, valid, num_bins=3)
    rows = {}
    for i in range(bs):
        if valid[i]:
            rows.setdefault(uids[i], []).append(i)
    p = {u: float(np.mean([success[i] for i in rs])) for u, rs in rows.items()}
    for b in range(3):
        lo, hi = b / 3, (b + 1) / 3
        members = [
            abs(float(adv[i])) for u, rs in rows.items() for i in rs if lo <= p[u] < hi or (b == 2 and p[u] == 1)
        ]
        assert d[f"agrae/abs_adv_p{lo:.2f}_{hi:.2f}"] == pytest.approx(np.mean(members) if members else 0.0)
    assert d["agrae/mu"] == pytest.approx(np.mean(list(p.values())))


def test_degenerate_batches_are_finite():
    z = torch.zeros(3)
    d = batch_diagnostics(z, z, torch.tensor([0, 0, 1]), torch.tensor([False, False, False]))
    assert all(np.isfinite(v) for v in d.values())
    assert d["agrae/pos_to_neg_ratio"] == 1.0 and d["agrae/mu"] == 0.0
    with pytest.raises(ValueError, match="num_bins"):
        batch_diagnostics(z, z, torch.tensor([0, 0, 1]), torch.tensor([True] * 3), num_bins=0)
