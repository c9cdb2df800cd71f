"""Exact, vectorised evaluation metrics: unbiased Pass@k, mean@n, maj@k, bootstrap CIs, paired tests.

Pass@k is the unbiased estimator of Chen et al. (2021): with ``n`` samples of which ``c`` are
correct, ``pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{j=n-c+1..n} (1 - k / j)``. It is computed
in log space from a per-k cumulative table of ``log1p(-k / j)``, so every problem costs two table
lookups and no Python loop runs over problems; the table is exact to ~1e-12 relative for n up to
several thousand.

Problems with fewer samples than ``k`` (``n_i < k``) have no unbiased Pass@k estimator. The
``short`` argument decides what they get:

- ``"clip"`` (default): Pass@n_i, i.e. 1 if any sample is correct else 0. Pass@k is non-decreasing
  in k, so this is a conservative (low) estimate; a problem with no samples gets 0.
- ``"nan"``: NaN, so that aggregates must decide explicitly (see :func:`mean_over_problems`).
- ``"raise"``: a ``ValueError`` naming the offending problems.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

ShortRule = Literal["clip", "nan", "raise"]

# Largest (k-block x table-width) float64 table built at once by pass_at_k_curve (~32 MiB).
_TABLE_BUDGET = 4_000_000


def _as_count_array(name: str, values: np.ndarray | Sequence[int]) -> np.ndarray:
    """Validate a per-problem count array and return it as int64 (same shape)."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must contain finite integer counts, got non-finite values")
        if not np.all(arr == np.round(arr)):
            bad = np.flatnonzero(arr.ravel() != np.round(arr.ravel()))[:5].tolist()
            raise ValueError(f"{name} must contain integer counts; non-integer values at flat indices {bad}")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        bad = np.flatnonzero(arr.ravel() < 0)[:5].tolist()
        raise ValueError(f"{name} must be >= 0; negative values at flat indices {bad}")
    return arr


def _validate_nc(n: np.ndarray | Sequence[int], c: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    n_arr = _as_count_array("n", n)
    c_arr = _as_count_array("c", c)
    if n_arr.shape != c_arr.shape:
        raise ValueError(f"n and c must have the same shape, got {n_arr.shape} and {c_arr.shape}")
    if np.any(c_arr > n_arr):
        bad = np.flatnonzero((c_arr > n_arr).ravel())[:5].tolist()
        raise ValueError(f"c must be <= n (correct samples cannot exceed samples); violated at flat indices {bad}")
    return n_arr, c_arr


def _validate_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def pass_at_k_curve(
    n: np.ndarray | Sequence[int],
    c: np.ndarray | Sequence[int],
    ks: Sequence[int],
    *,
    short: ShortRule = "clip",
) -> np.ndarray:
    """Unbiased Pass@k for several k at once.

    Args:
        n: per-problem sample counts, integer array of shape (P,) (any shape is accepted).
        c: per-problem correct counts, same shape as ``n``, ``0 <= c <= n``.
        ks: the k values (each >= 1).
        short: rule for problems with ``n_i < k`` (see the module docstring).

    Returns:
        float64 array of shape (len(ks), *n.shape): row i holds Pass@ks[i] per problem.
    """
    n_arr, c_arr = _validate_nc(n, c)
    k_arr = np.asarray([_validate_k(k) for k in ks], dtype=np.int64)
    if short not in ("clip", "nan", "raise"):
        raise ValueError(f"short must be 'clip', 'nan' or 'raise', got {short!r}")
    out_shape = (len(k_arr),) + n_arr.shape
    out = np.empty(out_shape, dtype=np.float64)
    if n_arr.size == 0 or len(k_arr) == 0:
        return out
    # Benchmarks repeat the same (n, c) pairs (usually one n for all problems): compute each
    # distinct pair once and scatter back at the end.
    n_all, c_all = n_arr.ravel(), c_arr.ravel()
    n_max = int(n_all.max())
    pair_keys, inverse = np.unique(n_all * (n_max + 1) + c_all, return_inverse=True)
    n_flat, c_flat = pair_keys // (n_max + 1), pair_keys % (n_max + 1)
    fail = n_flat - c_flat  # incorrect samples per problem
    width = n_max + 1
    j = np.arange(width, dtype=np.float64)
    block = max(1, _TABLE_BUDGET // width)
    out_flat = np.empty((len(k_arr), len(pair_keys)), dtype=np.float64)
    for start in range(0, len(k_arr), block):
        kb = k_arr[start : start + block]
        # table[i, m] = sum_{j=k+1..m} log(1 - k/j) for m > k, 0 for m <= k. For a problem with
        # n - c >= k, log C(n-c, k)/C(n, k) = table[n] - table[n - c]: only the c terms j in (n-c, n].
        kk = kb[:, None].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(j[None, :] > kk, np.log1p(-kk / np.maximum(j[None, :], 1.0)), 0.0)
        table = np.cumsum(terms, axis=1)
        rows = np.arange(len(kb))[:, None]
        log_ratio = table[rows, n_flat[None, :]] - table[rows, fail[None, :]]
        vals = -np.expm1(log_ratio)
        # Fewer than k incorrect samples: every k-subset contains a correct one.
        vals = np.where(fail[None, :] < kb[:, None], 1.0, vals)
        is_short = n_flat[None, :] < kb[:, None]
        if is_short.any():
            if short == "raise":
                k_bad = int(kb[np.flatnonzero(is_short.any(axis=1))[0]])
                idx = np.flatnonzero(n_all < k_bad)[:5].tolist()
                raise ValueError(
                    f"{int((n_all < k_bad).sum())} problem(s) have fewer than k={k_bad} samples "
                    f"(flat indices {idx}...); Pass@k has no unbiased estimator there. Use short='clip' or 'nan'."
                )
            fill = np.nan if short == "nan" else (c_flat > 0).astype(np.float64)[None, :]
            vals = np.where(is_short, fill, vals)
        out_flat[start : start + len(kb)] = vals
    out.reshape(len(k_arr), -1)[:] = out_flat[:, inverse.ravel()]
    return out


def pass_at_k(
    n: np.ndarray | Sequence[int],
    c: np.ndarray | Sequence[int],
    k: int,
    *,
    short: ShortRule = "clip",
) -> np.ndarray:
    """Per-problem unbiased Pass@k, ``1 - C(n - c, k) / C(n, k)``.

    Args:
        n: integer array (P,) of samples per problem.
        c: integer array (P,) of correct samples per problem, ``0 <= c <= n``.
        k: number of attempts, ``k >= 1``.
        short: what problems with ``n_i < k`` get: ``"clip"`` (Pass@n_i, conservative; default),
            ``"nan"`` or ``"raise"``.

    Returns:
        float64 array (P,) of per-problem estimates in [0, 1].

    Raises:
        TypeError / ValueError: non-integer counts, ``c > n``, negative counts, shape mismatch, k < 1.
    """
    return pass_at_k_curve(n, c, [k], short=short)[0]


def pass_at_k_reference(n: int, c: int, k: int) -> float:
    """Scalar product-form Pass@k (plain Python loop), the baseline used by tests and benchmarks."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for j in range(n - c + 1, n + 1):
        prod *= 1.0 - k / j
    return 1.0 - prod


def default_ks(n_max: int) -> list[int]:
    """Powers of two up to ``n_max``, plus ``n_max`` itself when it is not a power of two."""
    if n_max < 1:
        return []
    ks = [1 << i for i in range(int(np.log2(n_max)) + 1) if (1 << i) <= n_max]
    if ks[-1] != n_max:
        ks.append(n_max)
    return ks


def mean_at_n(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per-problem mean score over all its samples (mean@n).

    Args:
        scores: either a 2-D array (P, n) or a ragged sequence of per-problem score lists.

    Returns:
        float64 array (P,); NaN for a problem without samples.
    """
    if isinstance(scores, np.ndarray) and scores.ndim == 2:
        return scores.astype(np.float64).mean(axis=1)
    out = np.full(len(scores), np.nan)
    for i, s in enumerate(scores):
        if len(s):
            out[i] = float(np.mean(np.asarray(s, dtype=np.float64)))
    return out


# ---------------------------------------------------------------------------------------------
# maj@k
# ---------------------------------------------------------------------------------------------


def _vote_score(counts: np.ndarray, class_value: np.ndarray) -> np.ndarray:
    """Expected correctness of a majority vote given answer counts.

    Args:
        counts: (..., R) number of votes per answer class.
        class_value: (..., R) correctness in [0, 1] of each class (broadcastable to ``counts``).

    Returns:
        (...,) the mean value of the classes tied at the top count (uniform random tie-break);
        0 where no class got a vote.
    """
    top = counts.max(axis=-1, keepdims=True)
    tied = (counts == top) & (top > 0)
    n_tied = tied.sum(axis=-1)
    total = np.where(tied, class_value, 0.0).sum(axis=-1)
    return np.where(n_tied > 0, total / np.maximum(n_tied, 1), 0.0)


def encode_answers(answers: Sequence[str | None], correct: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Map one problem's extracted answers to class ids.

    Args:
        answers: (n,) extracted answer per sample; ``None`` or "" means no answer (no vote).
        correct: (n,) correctness per sample (bool or score in [0, 1]).

    Returns:
        ``(class_ids, class_value)``: (n,) int64 with -1 for no answer, and (R,) float64, the mean
        correctness of the samples in each class (samples with the same answer normally share a grade).
    """
    ids: dict[str, int] = {}
    class_ids = np.empty(len(answers), dtype=np.int64)
    for i, a in enumerate(answers):
        if a is None or a == "":
            class_ids[i] = -1
        else:
            class_ids[i] = ids.setdefault(str(a), len(ids))
    corr = np.asarray(correct, dtype=np.float64)
    r = len(ids)
    voted = class_ids >= 0
    sums = np.bincount(class_ids[voted], weights=corr[voted], minlength=r)
    cnts = np.bincount(class_ids[voted], minlength=r)
    value = np.where(cnts > 0, sums / np.maximum(cnts, 1), 0.0)
    return class_ids, value


def maj_at_k(
    answers: Sequence[Sequence[str | None]],
    correct: Sequence[Sequence[float]],
    ks: Sequence[int],
    *,
    num_draws: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Per-problem maj@k: probability that a majority vote over k random samples is correct.

    Definition: draw k of the problem's n samples uniformly WITHOUT replacement; samples without
    an extracted answer do not vote; the answer with the most votes wins, and a tie at the top is
    broken uniformly at random (so a tie between one correct and one wrong answer scores 0.5); if no
    drawn sample has an answer the vote fails (0). The value of the winning answer is the mean
    correctness of its samples.

    Estimator: exact for ``k == 1`` (mean correctness of answered samples over n) and ``k == n``
    (deterministic vote over all samples); otherwise the mean over ``num_draws`` random k-subsets
    (seeded; the k-subsets are the first k entries of random permutations, shared across k). Its
    per-problem Monte Carlo standard error is at most ``0.5 / sqrt(num_draws)``, and the error of a
    benchmark average shrinks further as ``1 / sqrt(P)``. Problems with ``n < k`` use ``k = n``.

    Args:
        answers: per-problem lists (length n_i) of extracted answers (``None`` = no answer).
        correct: per-problem lists (length n_i) of correctness (bool or score in [0, 1]).
        ks: vote sizes.
        num_draws: random subsets per problem for 1 < k < n.
        seed: RNG seed.

    Returns:
        float64 array (len(ks), P).
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct must list the same problems, got {len(answers)} and {len(correct)}")
    k_list = [_validate_k(k) for k in ks]
    rng = np.random.default_rng(seed)
    out = np.zeros((len(k_list), len(answers)), dtype=np.float64)
    for p, (ans, cor) in enumerate(zip(answers, correct, strict=True)):
        if len(ans) != len(cor):
            raise ValueError(f"problem {p}: {len(ans)} answers but {len(cor)} correctness values")
        n = len(ans)
        if n == 0:
            continue
        class_ids, value = encode_answers(ans, cor)
        r = len(value)
        if r == 0:
            continue  # nobody answered: every vote fails
        sample_value = np.where(class_ids >= 0, value[np.maximum(class_ids, 0)], 0.0)
        perms = None
        for i, k in enumerate(k_list):
            k_eff = min(k, n)
            if k_eff == 1:
                out[i, p] = sample_value.mean()
                continue
            if k_eff == n:
                counts = np.bincount(class_ids[class_ids >= 0], minlength=r)
                out[i, p] = float(_vote_score(counts, value))
                continue
            if perms is None:
                perms = np.argsort(rng.random((num_draws, n)), axis=1)
            drawn = class_ids[perms[:, :k_eff]]  # (B, k)
            # Count votes per draw with one bincount: draw b's class q goes to bin b * (r + 1) + q + 1,
            # bin offset 0 collects the "no answer" samples.
            flat = (np.arange(num_draws)[:, None] * (r + 1) + drawn + 1).ravel()
            counts = np.bincount(flat, minlength=num_draws * (r + 1)).reshape(num_draws, r + 1)[:, 1:]
            out[i, p] = float(_vote_score(counts, value[None, :]).mean())
    return out


# ---------------------------------------------------------------------------------------------
# Uncertainty: bootstrap over problems, paired comparison
# ---------------------------------------------------------------------------------------------


def mean_over_problems(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis (problems), ignoring NaN (problems where a metric is undefined)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        count = np.sum(~np.isnan(values), axis=-1)
        total = np.nansum(values, axis=-1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _bootstrap_weights(num_problems: int, num_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, P) resampling counts: each row is a multinomial draw of P problems with replacement."""
    return rng.multinomial(num_problems, np.full(num_problems, 1.0 / num_problems), size=num_boot).astype(np.float64)


def bootstrap_ci(
    values: np.ndarray,
    *,
    num_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean over problems.

    All metrics in ``values`` are resampled with the same problem draws (one matrix product).

    Args:
        values: (P,) or (M, P) per-problem values (M metrics, e.g. one row per k). No NaN allowed.
        num_boot: bootstrap replicates B.
        confidence: CI level.
        seed: RNG seed.

    Returns:
        ``(mean, low, high)``, each of shape () or (M,).
    """
    vals = np.asarray(values, dtype=np.float64)
    squeeze = vals.ndim == 1
    vals2 = np.atleast_2d(vals)
    if vals2.shape[-1] == 0:
        raise ValueError("bootstrap_ci needs at least one problem")
    if np.isnan(vals2).any():
        raise ValueError("bootstrap_ci got NaN values; drop undefined problems or use short='clip' first")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    p = vals2.shape[-1]
    rng = np.random.default_rng(seed)
    # Replicates in blocks so that the (block, P) weight matrix stays small for large benchmarks.
    block = max(1, min(num_boot, 4_000_000 // p))
    boot = np.concatenate(
        [_bootstrap_weights(p, min(block, num_boot - s), rng) @ vals2.T / p for s in range(0, num_boot, block)]
    )  # (B, M)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
    mean = vals2.mean(axis=1)
    if squeeze:
        return mean[0], low[0], high[0]
    return mean, low, high


@dataclass
class PairedResult:
    """Paired comparison of run A against run B on the same problems (difference = A - B)."""

    num_problems: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int  # problems where A > B
    losses: int  # problems where A < B
    ties: int
    exact_p: bool  # True when all 2^P sign flips were enumerated


def paired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    *,
    num_boot: int = 2000,
    num_perm: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap CI and sign-flip permutation test for mean(a - b) over the same problems.

    The p-value is two-sided for H0 "per-problem differences are symmetric around 0": the observed
    |mean(d)| is compared with |mean(s * d)| under random signs s. With at most ``log2(num_perm)``
    non-zero differences all sign patterns are enumerated (exact p); otherwise
    ``p = (1 + #{|T_b| >= |T|}) / (1 + num_perm)``.

    Args:
        a: (P,) per-problem metric of run A.
        b: (P,) per-problem metric of run B, same problem order.

    Returns:
        :class:`PairedResult`.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison needs two 1-D arrays over the same problems, got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired_comparison got NaN values")
    d = a - b
    p = d.size
    diff, low, high = bootstrap_ci(d, num_boot=num_boot, confidence=confidence, seed=seed)
    nz = d[d != 0]
    t_obs = abs(nz.sum())  # sign flips of zero differences change nothing
    tol = 1e-12 * max(1.0, np.abs(nz).sum())
    if nz.size == 0:
        p_value, exact = 1.0, True
    elif 2**nz.size <= num_perm:
        signs = ((np.arange(2**nz.size)[:, None] >> np.arange(nz.size)[None, :]) & 1) * 2 - 1
        t = np.abs(signs @ nz)
        p_value, exact = float(np.mean(t >= t_obs - tol)), True
    else:
        rng = np.random.default_rng(seed + 1)
        hits = 0
        chunk = max(1, 2_000_000 // nz.size)  # bound the sign matrix to a few MiB
        for start in range(0, num_perm, chunk):
            rows = min(chunk, num_perm - start)
            signs = rng.integers(0, 2, size=(rows, nz.size)).astype(np.float64) * 2.0 - 1.0
            hits += int(np.sum(np.abs(signs @ nz) >= t_obs - tol))
        p_value, exact = float((1 + hits) / (1 + num_perm)), False
    return PairedResult(
        num_problems=int(p),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        diff=float(diff),
        ci_low=float(low),
        ci_high=float(high),
        p_value=p_value,
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
        ties=int((d == 0).sum()),
        exact_p=exact,
    )
