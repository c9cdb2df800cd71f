"""Scoring: verl's ``compute_score`` convention, a batch API, and the arithmetic task's exact-integer rule.

Per item: extract the answer (caller's process, linear time) -> exact/normalised comparison (caller) -> only if
still undecided, a symbolic math-verify check in a :class:`GradingPool` worker under a hard timeout. A response
without an explicit final answer goes to the worker whole (its tail): in the recall extraction mode math-verify
extracts its last expression there. The single and batch APIs share every step, so they give the same scores.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from verl_agrae.reward.extract import (
    MAX_ANSWER_CHARS,
    check_mode,
    count_boxes,
    extract_answer,
    final_boxed,
    find_answer,
    last_boxed,
    last_integer,
    strip_answer,
)
from verl_agrae.reward.normalize import fast_verdict, normalize_answer
from verl_agrae.reward.pool import CheckResult, GradingPool, get_default_pool

__all__ = ["ARITHMETIC", "compute_score", "score_batch", "score_result"]

logger = logging.getLogger(__name__)

ARITHMETIC = "arithmetic"
_PROGRESS_MIN_ITEMS = 1000  # automatic progress bar from this batch size on
_INTEGER = re.compile(r"^([-+]?)0*(\d+?)(?:\.0*)?$")
_PRED_SHOWN_CHARS = 200


@dataclasses.dataclass
class _Item:
    """One item after the cheap steps: either decided, or waiting for a symbolic check of (pred, truth)."""

    pred: str
    truth: str
    acc: bool | None  # None: needs the symbolic check
    text: str | None = None  # set when math-verify must extract the answer from this response text itself

    def check_args(self) -> tuple[str, str, bool]:
        """What the pool checks: ``(pred, truth, False)`` or ``(response text, truth, True)``."""
        return (self.text, self.truth, True) if self.text is not None else (self.pred, self.truth, False)


def score_result(acc: bool, pred: str, timeout: bool = False, dapo: bool = False) -> dict[str, Any]:
    """The result dict shared by every scorer.

    Args:
        acc: whether the answer is correct.
        pred: extracted prediction ("" when nothing was extracted); long ones are truncated.
        timeout: the symbolic check ran out of time (then ``acc`` is False).
        dapo: DAPO-style score (+1 correct, -1 otherwise) instead of 1/0.

    Returns:
        ``{"score": float, "acc": bool, "pred": str, "timeout": bool}``.
    """
    if len(pred) > _PRED_SHOWN_CHARS:
        pred = pred[:_PRED_SHOWN_CHARS] + "..."
    score = (1.0 if acc else -1.0) if dapo else (1.0 if acc else 0.0)
    return {"score": score, "acc": bool(acc), "pred": pred, "timeout": bool(timeout)}


def _as_text(value: Any) -> str:
    """Anything to str without raising: bytes are decoded as UTF-8 with replacement characters."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - an object whose __str__ fails is no answer
        return ""


def _truth_answer(truth: str) -> str:
    """Ground truths are usually bare answers, but some datasets keep the ``\\boxed{...}``, some several of them
    (``\\boxed{2}, \\boxed{3}``): a ground truth is all answer, so every box counts."""
    boxed = final_boxed(truth, every_box=True) if "box" in truth else None
    return strip_answer(boxed if boxed is not None else truth)


def _canonical_integer(text: str) -> str | None:
    # Compared as strings: int() of a 1 MB digit string is slow and, beyond 4300 digits, refused by Python.
    m = _INTEGER.match(normalize_answer(text))
    if not m:
        return None
    sign, digits = m.groups()
    return digits if digits == "0" or sign != "-" else "-" + digits


def _prepare_arithmetic(solution: str, truth: str, mode: str) -> _Item:
    """Exact-integer rule: the boxed answer if there is a box, else the stated answer, else (recall mode only)
    the last integer."""
    box = last_boxed(solution)
    if box is not None:
        cand: str | None = strip_answer(box)
    else:
        cand = extract_answer(solution, mode)
        if mode == "recall" and (cand is None or _canonical_integer(cand) is None):
            cand = last_integer(solution)
    want = _canonical_integer(strip_answer(truth))
    if want is None:
        logger.debug("arithmetic ground truth is not an integer: %.80r", truth)
    got = _canonical_integer(cand) if cand else None
    return _Item(pred=cand or "", truth=truth, acc=want is not None and got == want)


def _prepare(data_source: str, solution: Any, ground_truth: Any, mode: str = "recall") -> _Item:
    solution_s, truth_s = _as_text(solution), _as_text(ground_truth)
    if data_source == ARITHMETIC:
        return _prepare_arithmetic(solution_s, truth_s, mode)
    found = find_answer(solution_s, mode)
    pred = found.answer
    truth = _truth_answer(truth_s)
    truth_parts = count_boxes(truth_s) if "box" in truth_s else 0
    if found.source == "box" and found.parts < truth_parts:
        pred = final_boxed(solution_s, at_least=truth_parts)  # the ground truth's k boxes are answered by k boxes
    if found.text is not None and truth and len(truth) <= MAX_ANSWER_CHARS:
        return _Item(pred="", truth=truth, acc=None, text=found.text)
    if pred is None or not truth:
        return _Item(pred=pred or "", truth=truth, acc=False)
    if pred == truth:
        return _Item(pred=pred, truth=truth, acc=True)
    if len(pred) > MAX_ANSWER_CHARS or len(truth) > MAX_ANSWER_CHARS:
        return _Item(pred=pred, truth=truth, acc=False)  # not worth a symbolic check; certain to be slow
    return _Item(pred=pred, truth=truth, acc=fast_verdict(pred, truth))


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _option(name: str, kwargs: Mapping[str, Any], extra_info: Any, default: Any = None) -> Any:
    """An option from the call's kwargs (verl's ``reward_kwargs``), else from ``extra_info``."""
    if name in kwargs and kwargs[name] is not None:
        return kwargs[name]
    if isinstance(extra_info, Mapping):
        if extra_info.get(name) is not None:
            return extra_info[name]
        nested = extra_info.get("reward_kwargs")
        if isinstance(nested, Mapping) and nested.get(name) is not None:
            return nested[name]
    return default


def _finish(item: _Item, check: CheckResult | None, dapo: bool) -> dict[str, Any]:
    if item.acc is not None:
        return score_result(item.acc, item.pred, dapo=dapo)
    assert check is not None
    pred = item.pred if item.text is None else strip_answer(check.pred or "")
    return score_result(check.equal, pred, timeout=check.timeout, dapo=dapo)


def compute_score(
    data_source: Any,
    solution_str: Any,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score one model output; verl's custom reward function signature.

    Use from verl with ``reward.custom_reward_function.path=pkg://verl_agrae.reward
    reward.custom_reward_function.name=compute_score`` (or the file path ``verl_agrae/reward/verl_entry.py``).

    Args:
        data_source: dataset name; ``"arithmetic"`` selects the exact-integer rule, anything else the math rule.
        solution_str: decoded model output.
        ground_truth: reference answer (LaTeX or plain; ``\\boxed{}`` around it is accepted).
        extra_info: verl's per-row ``extra_info``; may carry ``dapo`` / ``timeout`` / ``extraction``.
        **kwargs: ``dapo`` (bool: +1/-1 scores), ``timeout`` (seconds per symbolic check), ``extraction``
            (``"recall"``, the default, or ``"strict"``: see docs/reward.md), ``pool`` (a :class:`GradingPool`;
            default: the process-wide pool). verl's own extra kwargs are ignored.

    Returns:
        ``{"score": float, "acc": bool, "pred": str, "timeout": bool}``. An internal failure is logged and scored
        as incorrect, never raised.

    Raises:
        ValueError: for an unknown ``extraction`` mode (a configuration error, not a property of the item).
    """
    mode = check_mode(_option("extraction", kwargs, extra_info, None))
    dapo = False
    try:
        dapo = _flag(_option("dapo", kwargs, extra_info, False))
        item = _prepare(_as_text(data_source), solution_str, ground_truth, mode)
        if item.acc is not None:
            return _finish(item, None, dapo)
        timeout = _option("timeout", kwargs, extra_info, None)
        pool = kwargs.get("pool") or get_default_pool()
        pred, truth, in_text = item.check_args()
        limit = None if timeout is None else float(timeout)
        return _finish(item, pool.check(pred, truth, limit, in_text=in_text), dapo)
    except Exception:  # noqa: BLE001 - a reward function must not take the trainer down
        logger.exception("compute_score failed; scoring the item as incorrect")
        return score_result(False, "", dapo=dapo)


def _progress_bar(progress: Any, total: int) -> Any:
    if progress is None:
        progress = total >= _PROGRESS_MIN_ITEMS
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="grading", unit="item")


def score_batch(
    solutions: Sequence[Any],
    ground_truths: Sequence[Any],
    data_sources: Sequence[Any] | str | None = None,
    *,
    timeout: float | None = None,
    num_workers: int | None = None,
    dapo: bool = False,
    progress: bool | None = None,
    pool: GradingPool | None = None,
    extraction: str | None = None,
) -> list[dict[str, Any]]:
    """Score many outputs in parallel; results in input order, equal to ``compute_score`` item by item.

    Args:
        solutions: model outputs, length N.
        ground_truths: reference answers, length N.
        data_sources: one name for all items, or N names; None means the math rule for all.
        timeout: seconds per symbolic check (default: the pool's).
        num_workers: worker processes; None uses the process-wide pool, a number other than its size starts a
            temporary pool for this call.
        dapo: +1/-1 scores instead of 1/0.
        progress: tqdm progress bar (None: only for batches of 1000 items or more).
        pool: an existing :class:`GradingPool` to use.
        extraction: ``"recall"`` (default) or ``"strict"`` (see :func:`compute_score`).

    Returns:
        N dicts as returned by :func:`compute_score`.

    Raises:
        ValueError: if the lengths of ``solutions``, ``ground_truths`` and ``data_sources`` differ, or for an
            unknown extraction mode.
    """
    mode = check_mode(extraction)
    n = len(solutions)
    if len(ground_truths) != n:
        raise ValueError(f"score_batch: {n} solutions but {len(ground_truths)} ground truths")
    if data_sources is None or isinstance(data_sources, str):
        sources = [data_sources or ""] * n
    else:
        sources = [_as_text(s) for s in data_sources]
        if len(sources) != n:
            raise ValueError(f"score_batch: {n} solutions but {len(sources)} data sources")

    items = []
    for src, sol, gt in zip(sources, solutions, ground_truths, strict=True):
        try:
            items.append(_prepare(src, sol, gt, mode))
        except Exception:  # noqa: BLE001 - one bad row must not lose the batch
            logger.exception("score_batch: preparing an item failed; scoring it as incorrect")
            items.append(_Item(pred="", truth="", acc=False))
    pending = [i for i, it in enumerate(items) if it.acc is None]

    bar = _progress_bar(progress, n)
    own_pool: GradingPool | None = None
    checks: dict[int, CheckResult] = {}
    try:
        if bar is not None:
            bar.update(n - len(pending))
        if pending:
            if pool is None:
                pool = get_default_pool()
                if num_workers is not None and num_workers != pool.num_workers:
                    pool = own_pool = GradingPool(num_workers=num_workers, timeout=pool.timeout)
            results = pool.check_many(
                [items[i].check_args() for i in pending],
                timeout=timeout,
                progress=bar.update if bar is not None else None,
            )
            checks = dict(zip(pending, results, strict=True))
    finally:
        if own_pool is not None:
            own_pool.close()
        if bar is not None:
            bar.close()
    return [_finish(it, checks.get(i), dapo) for i, it in enumerate(items)]
