"""A-GRAE math (verl_agrae.advantage) against a plain reference loop, verl's GRPO and the spec's theory."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from verl_agrae.advantage import (
    agrae_sequence_advantage,
    agrae_terms,
    compute_agrae_outcome_advantage,
    difficulty_weight,
    group_ids_from_index,
)

EPS = 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# Reference: a plain per-row loop written straight from the spec (docs/agrae.md), in float64 Python math.
# ----------------------------------------------------------------------------------------------------------------------
def reference_agrae(
    token_level_rewards,
    response_mask,
    index,
    alpha=1.0,
    norm=True,
    shift=True,
    suppress=True,
    eps=EPS,
    threshold=None,
    mu=None,
):
    bs = len(index)
    r = [float(sum(token_level_rewards[i].tolist())) for i in range(bs)]
    valid = [sum(response_mask[i].tolist()) > 0 for i in range(bs)]
    groups: dict = {}
    for i in range(bs):
        if valid[i]:
            groups.setdefault(index[i], []).append(i)
    s = [(1.0 if r[i] > threshold else 0.0) if threshold is not None else r[i] for i in range(bs)]
    p = {g: sum(s[i] for i in rows) / len(rows) for g, rows in groups.items()}
    if mu is None:
        mu = sum(p.values()) / len(p) if p else 0.0
    out = [0.0] * bs
    for g, rows in groups.items():
        vals = [r[i] for i in rows]
        if len(rows) == 1:
            m, sd = 0.0, 1.0
        else:
            m, sd = statistics.fmean(vals), statistics.stdev(vals)
        for i in rows:
            if len(rows) >= 2 and max(vals) == min(vals):
                a = 0.0
            else:
                a = (r[i] - m) / (sd + eps) if norm else r[i] - m
            if shift and len(rows) >= 2 and 0 < p[g] < 1:  # w is unbounded at p in {0, 1}: exempt (see module)
                sp = math.sqrt(p[g])
                a *= (1 - mu) * 0.5 / (1 - sp + eps) + mu * 0.5 / (sp + eps)
            if suppress and a > 0:
                a *= min(1.0, mu / alpha)
            out[i] = a
    return out, mu


def make_batch(num_groups, length, seed, reward_kind="binary", singletons=0, padding=0, dtype=torch.float64):
    """Random batch: groups of random size 2..8, plus singleton groups and padding rows; uids are strings."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sizes = list(rng.integers(2, 9, size=num_groups)) + [1] * singletons
    uids = [f"uid-{k}" for k, n in enumerate(sizes) for _ in range(n)]
    bs = len(uids)
    if reward_kind == "binary":
        r = torch.randint(0, 2, (bs,), generator=g).to(dtype)
    elif reward_kind == "fractional":  # e.g. 0.9 * acc + 0.1 * format
        r = 0.9 * torch.randint(0, 2, (bs,), generator=g).to(dtype) + 0.1 * torch.randint(0, 2, (bs,), generator=g)
    elif reward_kind == "pm1":  # DAPO's +-1 score with an overlong penalty
        r = torch.where(torch.rand(bs, generator=g) < 0.4, 1.0, -1.0).to(dtype) - 0.3 * torch.rand(bs, generator=g).to(
            dtype
        ) * (torch.rand(bs, generator=g) < 0.2)
    else:
        raise ValueError(reward_kind)
    lengths = torch.randint(1, length + 1, (bs,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(dtype)
    tlr = torch.zeros(bs, length, dtype=dtype)
    tlr[torch.arange(bs), lengths - 1] = r  # outcome reward on the last response token, as verl does
    # shuffle rows so groups are not contiguous
    perm = torch.randperm(bs, generator=g)
    tlr, mask = tlr[perm], mask[perm]
    uids = [uids[i] for i in perm.tolist()]
    if padding:
        tlr = torch.cat([tlr, torch.zeros(padding, length, dtype=dtype)])
        mask = torch.cat([mask, torch.zeros(padding, length, dtype=dtype)])
        uids += [f"pad_{k}" for k in range(padding)]
    return tlr, mask, np.array(uids, dtype=object)


def advantages_at_mu(tlr, mask, uids, mu, **options):
    """A-GRAE's sequence advantages with ``mu`` fixed: the batch statistics, then steps 2-3 (``agrae_terms``)."""
    res = agrae_sequence_advantage(tlr, mask, uids, **options)
    adv, _ = agrae_terms(res.base_advantages, res.group_success, res.group_size, mu, res.options)
    return torch.where(res.valid, adv, torch.zeros_like(adv))


@pytest.mark.parametrize("num_groups", [1, 3, 17])
@pytest.mark.parametrize("length", [1, 9])
@pytest.mark.parametrize("reward_kind", ["binary", "fractional", "pm1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm", [True, False])
def test_vectorised_matches_reference_loop(num_groups, length, reward_kind, seed, norm):
    tlr, mask, uids = make_batch(num_groups, length, seed, reward_kind, singletons=seed, padding=seed)
    threshold = 0.0 if reward_kind == "pm1" else None
    alpha = [1.0, 0.5, 0.3][seed]
    for shift in (True, False):
        for suppress in (True, False):
            adv, ret = compute_agrae_outcome_advantage(
                tlr,
                mask,
                uids,
                alpha=alpha,
                norm_adv_by_std_in_grpo=norm,
                difficulty_shift=shift,
                suppress_correct=suppress,
                success_threshold=threshold,
            )
            ref, _ = reference_agrae(
                tlr, mask, uids, alpha=alpha, norm=norm, shift=shift, suppress=suppress, threshold=threshold
            )
            expected = torch.tensor(ref, dtype=torch.float64)[:, None] * mask
            torch.testing.assert_close(adv, expected, rtol=1e-7, atol=1e-8)
            assert torch.equal(adv, ret)
            assert torch.isfinite(adv).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_float32_matches_reference_and_supplied_mu(seed):
    tlr, mask, uids = make_batch(20, 5, seed, "binary", singletons=2, padding=3, dtype=torch.float32)
    adv = advantages_at_mu(tlr, mask, uids, 0.8)
    ref, mu = reference_agrae(tlr.double(), mask.double(), uids, mu=0.8)
    assert mu == 0.8
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    assert adv.dtype == torch.float32


def test_hand_computed_case():
    # group a: rewards 1,1,1,0 (p = 0.75); group b: 0,0,0,1 (p = 0.25); mu = 0.5, alpha = 1.
    r = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 1])[:, None]
    uids = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    res = agrae_sequence_advantage(r, torch.ones_like(r), uids)
    sd = statistics.stdev([1, 1, 1, 0])  # 0.5
    a_pos, a_neg = 0.25 / (sd + EPS), -0.75 / (sd + EPS)
    w_a = 0.5 * 0.5 / (1 - math.sqrt(0.75) + EPS) + 0.5 * 0.5 / (math.sqrt(0.75) + EPS)
    w_b = 0.5 * 0.5 / (1 - math.sqrt(0.25) + EPS) + 0.5 * 0.5 / (math.sqrt(0.25) + EPS)
    expected = [w_a * a_pos * 0.5] * 3 + [w_a * a_neg] + [w_b * -a_pos] * 3 + [w_b * -a_neg * 0.5]
    assert res.mu == pytest.approx(0.5)
    assert res.suppression == pytest.approx(0.5)
    torch.testing.assert_close(res.advantages, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_spec_scale_example():
    # Spec: at p = 0.875, mu = 0.2 an incorrect response gets about -15.6 where GRPO gives -2.5.
    r = torch.tensor([1.0] * 7 + [0.0])[:, None]
    uids = np.array(["g"] * 8, dtype=object)
    grpo = agrae_sequence_advantage(r, torch.ones_like(r), uids, difficulty_shift=False, suppress_correct=False)
    adv = advantages_at_mu(r, torch.ones_like(r), uids, 0.2)
    assert float(grpo.advantages[-1]) == pytest.approx(-2.47, abs=0.01)
    assert float(adv[-1]) == pytest.approx(-15.6, abs=0.1)


# ----------------------------------------------------------------------------------------------------------------------
# Equal to verl's GRPO with both A-GRAE terms off
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("reward_kind", ["binary", "fractional"])
def test_terms_off_equals_verl_grpo(seed, norm, reward_kind):
    from verl.trainer.ppo.core_algos import (
        compute_grpo_outcome_advantage,
        compute_grpo_vectorized_outcome_advantage,
    )

    tlr, mask, uids = make_batch(12, 6, seed, reward_kind, singletons=seed, dtype=torch.float32)
    ours, _ = compute_agrae_outcome_advantage(
        tlr, mask, uids, norm_adv_by_std_in_grpo=norm, difficulty_shift=False, suppress_correct=False
    )
    loop, _ = compute_grpo_outcome_advantage(tlr.clone(), mask, uids, norm_adv_by_std_in_grpo=norm)
    torch.testing.assert_close(ours, loop, rtol=1e-5, atol=1e-6)
    if seed == 0:  # verl's vectorised GRPO treats singletons differently (mean = r): compare without them
        vec, _ = compute_grpo_vectorized_outcome_advantage(tlr.clone(), mask, uids, norm_adv_by_std_in_grpo=norm)
        torch.testing.assert_close(ours, vec, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Theory checks from the spec
# ----------------------------------------------------------------------------------------------------------------------
def _groups(uids):
    out: dict = {}
    for i, u in enumerate(uids):
        out.setdefault(u, []).append(i)
    return out.values()


@pytest.mark.parametrize("seed", range(5))
def test_grae_is_symmetric_and_agrae_suppresses_correct_side(seed):
    tlr, mask, uids = make_batch(30, 1, seed, "binary")
    grae = agrae_sequence_advantage(tlr, mask, uids, difficulty_shift=False, suppress_correct=False)
    agrae = agrae_sequence_advantage(tlr, mask, uids, alpha=1.0)
    assert agrae.mu < 1.0
    r = tlr.sum(-1)
    mixed = 0
    for rows in _groups(uids):
        rows = torch.tensor(rows)
        a, b = grae.advantages[rows], agrae.advantages[rows]
        assert float(a.sum()) == pytest.approx(0.0, abs=1e-9)
        correct = r[rows] > 0
        if correct.all() or (~correct).all():
            assert (a == 0).all() and (b == 0).all()
            continue
        mixed += 1
        assert float(a[correct].abs().sum()) == pytest.approx(float(a[~correct].abs().sum()), rel=1e-9)
        assert float(b[correct].abs().sum()) < float(b[~correct].abs().sum())
        assert float(b.sum()) < 0
    assert mixed > 0


def test_softmax_toy_policy_gradient_on_unsampled_actions():
    # One-step softmax policy over 6 actions; 8 sampled actions drawn from {0, 1, 2}; actions 3..5 unsampled.
    # Policy gradient of sum_i A_i log pi(a_i) w.r.t. the logits: sum_i A_i (onehot(a_i) - pi).
    # For an unsampled action u the component is -pi_u * sum_i A_i: exactly 0 under GRAE (zero-sum), positive
    # (mass moves to u under gradient ascent) under A-GRAE with mu < alpha.
    torch.manual_seed(0)
    z = torch.randn(6, dtype=torch.float64, requires_grad=True)
    actions = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    reward = (actions == 0).double()  # action 0 is correct
    uids = np.array(["q"] * 8, dtype=object)
    # a second, all-failed group lowers the batch mu to 0.25 < alpha = 1
    r_all = torch.cat([reward, torch.zeros(8, dtype=torch.float64)])[:, None]
    uids_all = np.concatenate([uids, np.array(["h"] * 8, dtype=object)])

    def grad_for(adv):
        z.grad = None
        logp = torch.log_softmax(z, dim=0)[actions]
        (adv[:8] * logp).sum().backward()
        return z.grad.clone()

    grae = agrae_sequence_advantage(
        r_all, torch.ones_like(r_all), uids_all, difficulty_shift=False, suppress_correct=False
    )
    agrae = agrae_sequence_advantage(r_all, torch.ones_like(r_all), uids_all, alpha=1.0)
    assert agrae.mu == pytest.approx(0.25)
    g_grae, g_agrae = grad_for(grae.advantages), grad_for(agrae.advantages)
    assert torch.all(g_grae[3:].abs() < 1e-15)
    assert torch.all(g_agrae[3:] > 0)


@pytest.mark.parametrize("group_size", [4, 8, 16])
def test_update_magnitude_is_two_sqrt_pq_with_bessel_factor(group_size):
    mags = []
    for k in range(group_size + 1):
        p = k / group_size
        r = torch.tensor([1.0] * k + [0.0] * (group_size - k), dtype=torch.float64)[:, None]
        uids = np.array(["g"] * group_size, dtype=object)
        a = agrae_sequence_advantage(r, torch.ones_like(r), uids, difficulty_shift=False, suppress_correct=False)
        mag = float(a.advantages.abs().mean())
        expected = 2 * math.sqrt(p * (1 - p)) * math.sqrt((group_size - 1) / group_size)
        assert mag == pytest.approx(expected, abs=1e-5)
        mags.append(mag)
    assert int(np.argmax(mags)) == group_size // 2  # maximal at p = 0.5


def test_curriculum_easy_to_hard_ratio_falls_as_mu_rises():
    # easy group p = 0.875, hard group p = 0.125, update magnitudes without suppression (pure step 2)
    r = torch.tensor([1.0] * 7 + [0.0] + [1.0] + [0.0] * 7, dtype=torch.float64)[:, None]
    uids = np.array(["easy"] * 8 + ["hard"] * 8, dtype=object)
    ratios = []
    for mu in np.linspace(0.0, 1.0, 21):
        a = advantages_at_mu(r, torch.ones_like(r), uids, float(mu), suppress_correct=False)
        ratios.append(float(a[:8].abs().sum() / a[8:].abs().sum()))
    assert all(x > y for x, y in zip(ratios, ratios[1:], strict=False))
    assert ratios[0] > 1 > ratios[-1]  # easy favoured first, hard favoured at the end


def test_difficulty_weight_matches_formula_and_is_finite_at_edges():
    p = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    for mu in (0.0, 0.3, 1.0):
        w = difficulty_weight(p, mu, EPS)
        assert torch.isfinite(w).all()
        for pi, wi in zip(p.tolist(), w.tolist(), strict=True):
            assert wi == pytest.approx((1 - mu) * 0.5 / (1 - math.sqrt(pi) + EPS) + mu * 0.5 / (math.sqrt(pi) + EPS))


# ----------------------------------------------------------------------------------------------------------------------
# Edge cases and bad input
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_edge_groups_and_extreme_mu(mu):
    r = torch.tensor([1.0, 1, 1, 0, 0, 0, 1, 0, 1, 0.0])[:, None]  # all-correct, all-wrong, singleton, mixed, pad
    mask = torch.ones_like(r)
    mask[-1] = 0
    uids = np.array(["solved"] * 3 + ["failed"] * 3 + ["single", "mix", "mix", "pad_0"], dtype=object)
    adv = advantages_at_mu(r, mask, uids, mu)
    assert torch.isfinite(adv).all()
    assert (adv[:6] == 0).all()  # zero-variance groups: exactly 0
    assert adv[-1] == 0  # padding row
    # singleton: GRAE's r / (1 + eps), exempt from w, positive -> suppressed by min(1, mu)
    assert float(adv[6]) == pytest.approx(1 / (1 + EPS) * min(1.0, mu))
    if mu == 0.0:
        assert (adv[adv > 0]).numel() == 0  # all positives suppressed to 0


def test_padding_rows_do_not_change_statistics():
    tlr, mask, uids = make_batch(8, 4, 7, "binary")
    base = agrae_sequence_advantage(tlr, mask, uids)
    # padding rows carrying garbage rewards (even out of [0, 1]) and reused uids must be ignored
    pad_r = torch.full((3, 4), 5.0, dtype=tlr.dtype)
    padded = agrae_sequence_advantage(
        torch.cat([tlr, pad_r]),
        torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)]),
        np.concatenate([uids, uids[:3]]),
    )
    assert padded.mu == base.mu
    torch.testing.assert_close(padded.advantages[:-3], base.advantages)
    assert (padded.advantages[-3:] == 0).all()


def test_empty_and_all_padding_batches():
    res = agrae_sequence_advantage(torch.zeros(4, 3), torch.zeros(4, 3), np.array(list("abcd"), dtype=object))
    assert res.mu == 0.0 and (res.advantages == 0).all()
    adv, _ = compute_agrae_outcome_advantage(torch.zeros(0, 3), torch.zeros(0, 3), np.array([], dtype=object))
    assert adv.shape == (0, 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rewards_are_refused(bad):
    r = torch.tensor([[1.0], [bad], [0.0]])
    with pytest.raises(ValueError, match="row 1"):
        compute_agrae_outcome_advantage(r, torch.ones_like(r), np.array(["a", "a", "a"], dtype=object))


def test_non_finite_reward_on_padding_row_is_ignored():
    r = torch.tensor([[1.0], [0.0], [float("nan")]])
    mask = torch.tensor([[1.0], [1.0], [0.0]])
    adv, _ = compute_agrae_outcome_advantage(r, mask, np.array(["a", "a", "pad"], dtype=object))
    assert torch.isfinite(adv).all()


def test_rewards_outside_unit_interval_need_a_threshold():
    r = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    uids = np.array(["a"] * 4, dtype=object)
    with pytest.raises(ValueError, match="success_threshold"):
        compute_agrae_outcome_advantage(r, torch.ones_like(r), uids)
    # KL-in-reward makes failed groups slightly negative: still refused rather than sqrt of a negative
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        compute_agrae_outcome_advantage(r.clamp(min=-0.001), torch.ones_like(r), uids)
    adv, _ = compute_agrae_outcome_advantage(r, torch.ones_like(r), uids, success_threshold=0.0)
    assert torch.isfinite(adv).all()


def test_shape_and_option_errors():
    r = torch.ones(4, 3)
    uids = np.array(list("aabb"), dtype=object)
    with pytest.raises(ValueError, match="response_mask shape"):
        compute_agrae_outcome_advantage(r, torch.ones(4, 2), uids)
    with pytest.raises(ValueError, match="index"):
        compute_agrae_outcome_advantage(r, torch.ones(4, 3), uids[:3])
    with pytest.raises(ValueError, match="index"):
        compute_agrae_outcome_advantage(r, torch.ones(4, 3), None)
    with pytest.raises(ValueError, match="bs, L"):
        compute_agrae_outcome_advantage(torch.ones(4), torch.ones(4), uids)
    with pytest.raises(ValueError, match="alpha"):
        compute_agrae_outcome_advantage(r, torch.ones(4, 3), uids, alpha=0.0)
    with pytest.raises(ValueError, match="mu must lie in"):
        advantages_at_mu(r / 3, torch.ones(4, 3), uids, 1.5)


def test_group_ids_accept_strings_ints_and_tensors():
    ids, n = group_ids_from_index(np.array(["x", "y", "x", "z"], dtype=object), 4)
    assert n == 3 and ids.tolist() == [0, 1, 0, 2]
    ids, n = group_ids_from_index(torch.tensor([7, 3, 7, 9]), 4)
    assert n == 3 and ids[0] == ids[2] and len(set(ids.tolist())) == 3
    ids, n = group_ids_from_index(np.array(["x", "y", "x"]), 3)  # fixed-width unicode array
    assert n == 2 and ids[0] == ids[2]


@pytest.mark.parametrize("seed", range(3))
def test_valid_rows_equals_full_scan_for_any_mask_layout(seed):
    from verl_agrae.advantage import valid_rows

    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(64, 7, generator=g) < 0.3).long()  # holes anywhere, first column often 0
    mask[:5] = 0  # padding rows
    assert torch.equal(valid_rows(mask), mask.sum(-1) > 0)
    assert torch.equal(valid_rows(mask.bool()), mask.sum(-1) > 0)


def test_int64_mask_as_verl_builds_it_gives_float_advantages():
    tlr, mask, uids = make_batch(6, 4, 5, "binary", padding=2, dtype=torch.float32)
    adv, _ = compute_agrae_outcome_advantage(tlr, mask.long(), uids)
    ref, _ = compute_agrae_outcome_advantage(tlr, mask, uids)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, ref)


def test_groups_outside_the_batch_count_in_mu_only():
    # Dynamic sampling kept one mixed group (p = 0.5) and dropped 2 all-solved and 1 all-failed group.
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None]
    uids = np.array(["m"] * 4, dtype=object)
    res = agrae_sequence_advantage(r, torch.ones_like(r), uids, extra_group_success=[1.0, 1.0, 0.0])
    assert res.mu_batch == pytest.approx(0.5)
    assert res.mu == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    ref, _ = reference_agrae(r, torch.ones_like(r), uids, mu=(0.5 + 2) / 4)
    torch.testing.assert_close(res.advantages, torch.tensor(ref, dtype=torch.float32))
    with pytest.raises(ValueError, match="success rates in \\[0, 1\\]"):
        agrae_sequence_advantage(r, torch.ones_like(r), uids, extra_group_success=[1.5])
    assert res.mu_source == "generated" and res.extra_group_success == (1.0, 1.0, 0.0)
    alone = agrae_sequence_advantage(r, torch.ones_like(r), uids)
    assert alone.mu_source == "batch" and alone.extra_group_success == () and alone.mu == alone.mu_batch


def test_all_success_group_with_differing_rewards_is_not_blown_up():
    # DAPO: every response correct (score > 0) but one has an overlong penalty -> rewards differ, p = 1.
    r = torch.tensor([1.0, 0.8, 1.0, 1.0])[:, None]
    uids = np.array(["g"] * 4, dtype=object)
    grpo = agrae_sequence_advantage(
        r, torch.ones_like(r), uids, success_threshold=0.0, difficulty_shift=False, suppress_correct=False
    )
    res = agrae_sequence_advantage(r, torch.ones_like(r), uids, success_threshold=0.0, suppress_correct=False)
    assert res.group_success[0] == 1.0
    torch.testing.assert_close(res.advantages, grpo.advantages)  # w = 1 at p = 1
    assert float(res.advantages.abs().max()) < 2.0


def test_bf16_rewards_use_float32_statistics():
    tlr, mask, uids = make_batch(10, 3, 4, "fractional", dtype=torch.float32)
    adv16, _ = compute_agrae_outcome_advantage(tlr.bfloat16(), mask, uids)
    adv32, _ = compute_agrae_outcome_advantage(tlr.bfloat16().float(), mask, uids)
    torch.testing.assert_close(adv16, adv32)
