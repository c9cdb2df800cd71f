"""A-GRAE advantage estimation as pure, vectorised torch (no verl import).

A-GRAE (Yu et al., arXiv 2602.05548) reshapes GRPO's group-relative advantage (GRAE) in two ways,
both driven by the batch mean success rate ``mu``:

1. dynamic difficulty attention shift ``w(p, mu)`` (sample level): while ``mu`` is low the update
   favours easy prompts (high success rate ``p``), and the focus moves to hard prompts as ``mu`` rises;
2. asymmetric suppression (group level): positive advantages are scaled by ``min(1, mu / alpha)``,
   so while the policy is weak the group's advantages sum to a negative number and probability mass
   moves towards unsampled tokens (exploration).

The method as implemented, with the choices beyond the authors' code, is in ``docs/agrae.md``; every function
below names the spec step it implements. Groups are handled with ``index_add_``/``scatter_reduce`` over integer
group ids, never with a Python loop over rows.

Padding rows (all-zero ``response_mask``, which verl adds to balance batches) are excluded from every
statistic and always get a zero advantage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from verl_agrae.config import AgraeConfig

__all__ = [
    "AgraeResult",
    "MU_FROM_BATCH",
    "MU_FROM_GENERATED",
    "agrae_sequence_advantage",
    "agrae_terms",
    "batch_mean_success",
    "compute_agrae_outcome_advantage",
    "difficulty_weight",
    "dropped_group_success",
    "group_ids_from_index",
    "group_mean_std",
    "grae_advantage",
    "success_from_rewards",
    "success_of_responses",
    "to_token_level",
    "valid_rows",
]


_UNIT_TOLERANCE = 1e-6

#: ``AgraeResult.mu_source`` values.
MU_FROM_BATCH = "batch"
MU_FROM_GENERATED = "generated"


@dataclass(frozen=True)
class AgraeResult:
    """Everything A-GRAE computed for one batch (sequence level), for logging and diagnostics.

    Attributes:
        advantages: ``(bs,)`` final sequence-level advantages (0 on padding rows).
        base_advantages: ``(bs,)`` GRAE advantages before the two A-GRAE terms (0 on padding rows).
        success: ``(bs,)`` per-response success ``s_i`` in [0, 1] (0 on padding rows).
        group_success: ``(bs,)`` success rate ``p_g`` of each row's group (0 on padding rows).
        group_size: ``(bs,)`` number of valid responses in each row's group (0 on padding rows).
        group_ids: ``(bs,)`` int64 dense group id of each row.
        valid: ``(bs,)`` bool, rows with at least one response token.
        mu: batch mean success rate used for the A-GRAE terms.
        mu_batch: mean success rate over this batch's own valid groups.
        mu_source: where ``mu`` came from: :data:`MU_FROM_BATCH` (the batch alone: no caller said which groups
            were generated outside it) or :data:`MU_FROM_GENERATED` (the batch plus the groups generated for the
            step but left out of it, handed in by the trainer).
        extra_group_success: success rates of those groups, as counted in ``mu`` (empty for the batch alone).
        suppression: factor ``min(1, mu / alpha)`` applied to positive advantages (1.0 when off).
        options: the options the estimator ran with.
    """

    advantages: torch.Tensor
    base_advantages: torch.Tensor
    success: torch.Tensor
    group_success: torch.Tensor
    group_size: torch.Tensor
    group_ids: torch.Tensor
    valid: torch.Tensor
    mu: float
    mu_batch: float
    mu_source: str
    extra_group_success: tuple[float, ...]
    suppression: float
    options: AgraeConfig


def group_ids_from_index(index: Any, batch_size: int) -> tuple[torch.Tensor, int]:
    """Map verl's per-row group labels to dense int64 ids.

    Args:
        index: ``(bs,)`` group label of every row: a numpy array of uid strings (what verl passes),
            a list/tuple of hashables, or an integer tensor/array.
        batch_size: expected number of rows.

    Returns:
        ``(group_ids, num_groups)`` with ``group_ids`` an int64 tensor of shape ``(bs,)`` in
        ``[0, num_groups)``.

    Raises:
        ValueError: when ``index`` is missing or its length is not ``batch_size``.
    """
    if index is None:
        raise ValueError("A-GRAE needs `index` (the per-row group uid); got None")
    if isinstance(index, torch.Tensor):
        arr = index.detach().cpu().numpy()
    else:
        arr = np.asarray(index)
    if arr.ndim != 1 or arr.shape[0] != batch_size:
        raise ValueError(f"`index` must have shape ({batch_size},) to match the batch; got {tuple(arr.shape)}")
    if batch_size == 0:
        return torch.zeros(0, dtype=torch.long), 0
    if arr.dtype == object:
        # verl passes uid strings in an object array; np.unique sorts Python objects one by one,
        # a dict factorisation is linear and several times faster for string uids.
        mapping: dict[Any, int] = {}
        ids = np.fromiter((mapping.setdefault(u, len(mapping)) for u in arr.tolist()), dtype=np.int64, count=batch_size)
        return torch.from_numpy(ids), len(mapping)
    _, inverse = np.unique(arr, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64, copy=False)
    return torch.from_numpy(inverse), int(inverse.max()) + 1


def group_mean_std(
    values: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group count, mean and Bessel-corrected std over the valid rows.

    Args:
        values: ``(bs,)`` float values.
        group_ids: ``(bs,)`` int64 group ids in ``[0, num_groups)``.
        valid: ``(bs,)`` bool, rows that count.
        num_groups: number of groups.

    Returns:
        ``(count, mean, std)``, each ``(num_groups,)``. Groups with no valid row have count 0,
        mean 0, std 0; singleton groups have std 0.
    """
    w = valid.to(values.dtype)
    count = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, group_ids, w)
    total = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, group_ids, values * w)
    mean = total / count.clamp(min=1.0)
    # Two-pass variance (deviations from the group mean): the one-pass E[x^2]-E[x]^2 form cancels
    # catastrophically for large rewards.
    dev = (values - mean[group_ids]) * w
    sq = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, group_ids, dev * dev)
    std = torch.sqrt(sq / (count - 1.0).clamp(min=1.0))
    return count, mean, std


def valid_rows(response_mask: torch.Tensor) -> torch.Tensor:
    """Rows with at least one response token (non-padding rows).

    Exact for any mask, but cheap for verl's layout: responses are right-padded, so a valid row almost always
    has its first mask entry set; only the rows where it is not (padding rows) are scanned in full. This
    avoids a full ``(bs, L)`` pass, which at 8192 x 1024 costs as much as the estimator's remaining work.

    Args:
        response_mask: ``(bs, L)``.

    Returns:
        ``(bs,)`` bool.
    """
    if response_mask.shape[1] == 0:
        return torch.zeros(response_mask.shape[0], dtype=torch.bool)
    valid = response_mask[:, 0] != 0
    unsure = torch.nonzero(~valid).squeeze(-1)
    if unsure.numel():
        valid[unsure] = (response_mask[unsure] != 0).any(dim=-1)
    return valid


def success_from_rewards(
    rewards: torch.Tensor,
    valid: torch.Tensor | None = None,
    success_threshold: float | None = None,
    what: str = "outcome reward",
) -> torch.Tensor:
    """Per-response success ``s_i`` (spec, Notation) from outcome rewards alone.

    The success rule where the reward function reports no ``acc`` (:func:`success_of_responses` is the whole
    rule); also applied to the shared filter values verl reports for dropped groups when no ``acc`` is known.

    Args:
        rewards: ``(n,)`` outcome rewards ``r_i`` (or shared per-group values).
        valid: ``(n,)`` bool, rows that count; None: all.
        success_threshold: when given, ``s_i = 1[r_i > threshold]``; otherwise ``s_i = r_i``, which
            requires every valid reward to lie in [0, 1] (up to a 1e-6 rounding tolerance, then clamped).
        what: what ``rewards`` are, for the error message.

    Returns:
        ``(n,)`` float success in [0, 1], 0 on invalid rows.

    Raises:
        ValueError: rewards outside [0, 1] with no threshold (DAPO's +-1 scores, overlong penalties,
            KL in the reward): the success rate would be meaningless and ``sqrt(p)`` undefined.
    """
    if valid is None:
        valid = torch.ones(rewards.shape[0], dtype=torch.bool)
    if success_threshold is not None:
        s = (rewards > success_threshold).to(rewards.dtype)
    else:
        # Float rounding (0.9 * acc + 0.1 * format summed over tokens) may land a hair outside [0, 1]; a
        # KL-in-reward shift (~1e-3) must not, so only this tolerance is accepted, then clamped.
        outside = valid & ((rewards < -_UNIT_TOLERANCE) | (rewards > 1 + _UNIT_TOLERANCE))
        if bool(outside.any()):
            bad = int(torch.nonzero(outside)[0])
            raise ValueError(
                f"A-GRAE: {what} {rewards[bad].item():.6g} of row {bad} is outside [0, 1], so it is not a "
                "success rate; set algorithm.agrae.success_threshold (e.g. 0.0 for DAPO's +1/-1 scores)"
            )
        s = rewards.clamp(min=0.0, max=1.0)
    return torch.where(valid, s, torch.zeros_like(s))


def success_of_responses(
    scores: torch.Tensor,
    acc: torch.Tensor | None,
    valid: torch.Tensor | None = None,
    success_threshold: float | None = None,
    what: str = "outcome reward",
) -> torch.Tensor:
    """Per-response success ``s_i``: the project's one success rule.

    When the reward function reports ``acc`` (its own verdict on the answer, ``reward_extra_info["acc"]``), success
    is ``acc``: a correct answer that DAPO's overlong shaping pushed to a score of 0 or below still succeeded.
    Otherwise success comes from the score (:func:`success_from_rewards`: the score itself when it lies in
    [0, 1], ``1[score > success_threshold]`` when a threshold is set). Used for the batch's rows (the estimator)
    and for every group left out of the batch (dynamic sampling's dropped and surplus groups, read by our replay
    buffer), so they can never disagree at an edge.

    Args:
        scores: ``(n,)`` outcome scores (sum of the token-level rewards).
        acc: ``(n,)`` the reward function's ``acc`` per response, or None when it reports none.
        valid: ``(n,)`` bool, rows that count; None: all.
        success_threshold: see :func:`success_from_rewards` (unused when ``acc`` is given).
        what: what ``scores`` are, for error messages.

    Returns:
        ``(n,)`` float success in [0, 1], 0 on invalid rows.

    Raises:
        ValueError: ``acc`` with the wrong shape or outside [0, 1]; scores outside [0, 1] with neither ``acc``
            nor a threshold.
    """
    if acc is None:
        return success_from_rewards(scores, valid, success_threshold, what)
    acc = torch.as_tensor(acc).to(dtype=scores.dtype if scores.is_floating_point() else torch.float32).reshape(-1)
    if acc.shape != scores.shape:
        raise ValueError(f"A-GRAE: acc has {acc.numel()} entries for {scores.numel()} responses")
    if valid is None:
        valid = torch.ones(scores.shape[0], dtype=torch.bool)
    bad = valid & ~((acc >= 0) & (acc <= 1))
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0])
        raise ValueError(f"A-GRAE: acc {acc[row].item():.6g} of row {row} is not in [0, 1]")
    return torch.where(valid, acc, torch.zeros_like(acc))


def dropped_group_success(dropped: Mapping[Any, int] | None, success_threshold: float | None) -> list[float]:
    """Success rates of groups left out of the batch, one entry per group, by the one success rule.

    Args:
        dropped: ``{shared filter-metric value: group count}``, as verl's replay buffer reports the groups
            dynamic sampling dropped (every response of such a group has the same value). None or empty: none.
        success_threshold: A-GRAE's ``success_threshold``, applied as to the batch's rows.

    Raises:
        ValueError: a value outside [0, 1] with no threshold (e.g. filtering on DAPO's +-1 score).
    """
    items = list((dropped or {}).items())
    if not items:
        return []
    values = torch.tensor([float(v) for v, _ in items], dtype=torch.float64)
    success = success_from_rewards(
        values, None, success_threshold, what="filter metric of a group dropped by dynamic sampling"
    )
    return [float(p) for p, (_, count) in zip(success.tolist(), items, strict=True) for _ in range(int(count))]


def batch_mean_success(group_success: torch.Tensor, group_count: torch.Tensor) -> float:
    """Batch mean success rate ``mu``: the mean of ``p_g`` over groups with at least one valid row.

    Args:
        group_success: ``(num_groups,)`` success rate of each group.
        group_count: ``(num_groups,)`` number of valid rows of each group.

    Returns:
        ``mu`` in [0, 1]; 0.0 for a batch with no valid row (spec, Notation).
    """
    present = group_count > 0
    if not bool(present.any()):
        return 0.0
    return float(group_success[present].mean())


def grae_advantage(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    valid: torch.Tensor,
    num_groups: int,
    norm_adv_by_std: bool,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's group-relative advantage ``A_hat`` (spec step 1), padding-aware.

    ``A_hat_i = (r_i - mean_g) / (std_g + eps)`` (Bessel std) or ``r_i - mean_g`` without std
    normalisation (Dr.GRPO). Singleton groups use mean 0 and std 1 (verl's convention); groups of two
    or more with zero variance get exactly 0.

    Args:
        rewards: ``(bs,)`` outcome rewards.
        group_ids: ``(bs,)`` int64 group ids.
        valid: ``(bs,)`` bool.
        num_groups: number of groups.
        norm_adv_by_std: divide by the group std (GRPO) or not (Dr.GRPO).
        epsilon: added to the std.

    Returns:
        ``(advantages, group_size)``: ``(bs,)`` advantages (0 on invalid rows) and ``(bs,)`` valid
        size of each row's group.
    """
    count, mean, std = group_mean_std(rewards, group_ids, valid, num_groups)
    size = count[group_ids]
    singleton = size == 1
    row_mean = torch.where(singleton, torch.zeros_like(rewards), mean[group_ids])
    row_std = torch.where(singleton, torch.ones_like(rewards), std[group_ids])
    centred = rewards - row_mean
    adv = centred / (row_std + epsilon) if norm_adv_by_std else centred
    # Exact zeros for constant groups: float rounding of the mean would otherwise leave +-1e-9 residues
    # that the difficulty weight (up to ~5e5 at p in {0, 1}) would blow up.
    gmin = torch.full((num_groups,), float("inf"), dtype=rewards.dtype)
    gmax = torch.full((num_groups,), float("-inf"), dtype=rewards.dtype)
    vr_hi = torch.where(valid, rewards, torch.full_like(rewards, float("inf")))
    vr_lo = torch.where(valid, rewards, torch.full_like(rewards, float("-inf")))
    gmin = gmin.scatter_reduce(0, group_ids, vr_hi, reduce="amin")
    gmax = gmax.scatter_reduce(0, group_ids, vr_lo, reduce="amax")
    constant = (gmin == gmax)[group_ids] & (size >= 2)
    adv = torch.where(valid & ~constant, adv, torch.zeros_like(adv))
    return adv, size


def difficulty_weight(p: torch.Tensor, mu: float, epsilon: float) -> torch.Tensor:
    """Dynamic difficulty attention shift ``w(p, mu)`` (spec step 2).

    ``w = (1 - mu) * 0.5 / (1 - sqrt(p) + eps) + mu * 0.5 / (sqrt(p) + eps)``: the first term grows
    with ``p`` (easy prompts), the second with ``1/p`` (hard prompts).

    Args:
        p: ``(...)`` group success rates in [0, 1].
        mu: batch mean success rate in [0, 1].
        epsilon: keeps both denominators positive.

    Returns:
        ``(...)`` weights, same shape as ``p``.
    """
    sp = torch.sqrt(p.clamp(min=0.0, max=1.0))
    return (1.0 - mu) * 0.5 / (1.0 - sp + epsilon) + mu * 0.5 / (sp + epsilon)


def agrae_terms(
    base: torch.Tensor, group_success: torch.Tensor, group_size: torch.Tensor, mu: float, config: AgraeConfig
) -> tuple[torch.Tensor, float]:
    """A-GRAE's two terms (spec steps 2 and 3) applied to GRAE advantages for a given ``mu``.

    Args:
        base: ``(bs,)`` GRAE advantages (0 on padding rows).
        group_success: ``(bs,)`` success rate ``p`` of each row's group.
        group_size: ``(bs,)`` valid size of each row's group.
        mu: batch mean success rate in [0, 1].
        config: the options (``difficulty_shift``, ``suppress_correct``, ``alpha``, ``epsilon``).

    Returns:
        ``(advantages, suppression)``: ``(bs,)`` advantages and the factor applied to positive ones (1.0 when
        ``suppress_correct`` is off). The one place ``min(1, mu / alpha)`` is computed.

    Raises:
        ValueError: ``mu`` outside [0, 1].
    """
    if not (0.0 <= mu <= 1.0):
        raise ValueError(f"A-GRAE: mu must lie in [0, 1], got {mu}")
    adv = base
    if config.difficulty_shift:
        w = difficulty_weight(group_success, mu, config.epsilon)
        # Exempt (w = 1): singletons (spec: one response says nothing about difficulty) and groups whose success
        # rate is 0 or 1, where w ~ 0.5 / eps = 5e5. The spec only meets the latter with constant rewards (A = 0);
        # with a success_threshold, rewards can still differ inside an all-success or all-failure group (DAPO's
        # overlong penalty, KL in the reward) and w would blow those differences up by 5e5.
        shifted = (group_size >= 2) & (group_success > 0) & (group_success < 1)
        adv = torch.where(shifted, w * adv, adv)
    factor = min(1.0, mu / config.alpha) if config.suppress_correct else 1.0
    if config.suppress_correct:
        adv = torch.where(adv > 0, adv * factor, adv)
    return adv, factor


def agrae_sequence_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    config: AgraeConfig | None = None,
    *,
    extra_group_success: Sequence[float] | torch.Tensor | None = None,
    acc: torch.Tensor | None = None,
    **options: Any,
) -> AgraeResult:
    """A-GRAE sequence-level advantages with all intermediate quantities (spec steps 1-3).

    Args:
        token_level_rewards: ``(bs, L)`` rewards; the outcome reward is their sum over tokens.
        response_mask: ``(bs, L)`` 1 on response tokens; all-zero rows are padding.
        index: ``(bs,)`` group labels (numpy array of uid strings as verl passes, or ints).
        config: the options (:class:`~verl_agrae.config.AgraeConfig`, whose defaults are the only ones).
        extra_group_success: success rates ``p`` of groups generated for this step but absent from the batch
            (DAPO's dynamic sampling drops the groups with ``p`` in {0, 1}); they count in ``mu`` only, so
            ``mu`` is the mean over all generated groups. ``None``: ``mu`` is the batch's own.
        acc: ``(bs,)`` the reward function's ``acc`` per row, when it reports one: success is then ``acc``, not
            derived from the reward (:func:`success_of_responses`). None: success from the rewards.
        **options: :class:`~verl_agrae.config.AgraeConfig` fields overriding ``config`` (``alpha=0.5``, ...).

    Returns:
        An :class:`AgraeResult` (with the options it used and where ``mu`` came from).

    Raises:
        ValueError: on shape mismatches, non-finite rewards, rewards outside [0, 1] without a threshold, or
            invalid options.
    """
    config = config or AgraeConfig()
    if options:
        config = dataclasses.replace(config, **options)
    if token_level_rewards.dim() != 2:
        raise ValueError(f"token_level_rewards must be (bs, L); got shape {tuple(token_level_rewards.shape)}")
    if response_mask.shape != token_level_rewards.shape:
        raise ValueError(
            f"response_mask shape {tuple(response_mask.shape)} does not match token_level_rewards shape "
            f"{tuple(token_level_rewards.shape)}"
        )
    bs = token_level_rewards.shape[0]
    # All statistics in float32 or wider (bf16 rewards would round the group means), on CPU: the trainer hands
    # us CPU tensors already. to_token_level's multiply brings the result back to the caller's device.
    dtype = torch.promote_types(token_level_rewards.dtype, torch.float32)
    rewards = token_level_rewards.detach().to(device="cpu", dtype=dtype).sum(dim=-1)
    valid = valid_rows(response_mask.detach().to("cpu"))
    if not bool(torch.isfinite(rewards[valid]).all()):
        bad = int(torch.nonzero(valid & ~torch.isfinite(rewards))[0])
        raise ValueError(f"A-GRAE: outcome reward of row {bad} is {rewards[bad].item()} (not finite)")
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    group_ids, num_groups = group_ids_from_index(index, bs)

    base, size = grae_advantage(rewards, group_ids, valid, num_groups, config.norm_adv_by_std_in_grpo, config.epsilon)
    success = success_of_responses(rewards, acc, valid, config.success_threshold)
    count, p_group, _ = group_mean_std(success, group_ids, valid, num_groups)
    batch_mu = batch_mean_success(p_group, count)
    if extra_group_success is None:
        used_mu, source = batch_mu, MU_FROM_BATCH
    else:
        extra = torch.as_tensor(extra_group_success, dtype=torch.float64).reshape(-1)
        if bool(((extra < 0) | (extra > 1) | ~torch.isfinite(extra)).any()):
            raise ValueError("A-GRAE: extra_group_success values must be success rates in [0, 1]")
        n_batch = int((count > 0).sum())
        total = n_batch + extra.numel()
        used_mu = (batch_mu * n_batch + float(extra.sum())) / total if total else 0.0
        source = MU_FROM_GENERATED
    p_row = torch.where(valid, p_group[group_ids], torch.zeros_like(rewards))
    adv, factor = agrae_terms(base, p_row, size, used_mu, config)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    return AgraeResult(
        advantages=adv,
        base_advantages=base,
        success=success,
        group_success=p_row,
        group_size=size,
        group_ids=group_ids,
        valid=valid,
        mu=used_mu,
        mu_batch=batch_mu,
        mu_source=source,
        extra_group_success=() if extra_group_success is None else tuple(extra.tolist()),
        suppression=factor,
        options=config,
    )


@torch.no_grad()
def compute_agrae_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | Sequence[Any] | torch.Tensor,
    config: AgraeConfig | None = None,
    *,
    extra_group_success: Sequence[float] | torch.Tensor | None = None,
    acc: torch.Tensor | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level A-GRAE advantages, verl's estimator contract (spec step 4).

    Args:
        token_level_rewards: ``(bs, L)``.
        response_mask: ``(bs, L)``.
        index: ``(bs,)`` group labels.
        config, extra_group_success, acc, options: see :func:`agrae_sequence_advantage`.

    Returns:
        ``(advantages, returns)``, both ``(bs, L)`` on the device and dtype of ``token_level_rewards``
        (float32 if it is not floating point); ``returns`` equals ``advantages`` as in verl's GRPO.
    """
    result = agrae_sequence_advantage(
        token_level_rewards, response_mask, index, config, extra_group_success=extra_group_success, acc=acc, **options
    )
    adv = to_token_level(result.advantages, response_mask)
    return adv, adv


def to_token_level(seq_advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast sequence-level advantages over response tokens (spec step 4).

    Args:
        seq_advantages: ``(bs,)``.
        response_mask: ``(bs, L)``.

    Returns:
        ``(bs, L)`` advantages on ``response_mask``'s device, zero outside the response.
    """
    # Multiply, don't cast: verl's masks are int64 and type promotion gives a float result in one pass.
    return seq_advantages.to(response_mask.device).unsqueeze(-1) * response_mask
