"""Accuracy plus a format bonus: the Geometry3K reward of the A-GRAE authors' runs (``SETTINGS=authors``).

``score = (1 - format_weight) * acc + format_weight * format_ok``, where ``format_ok`` is 1 when the response
reasons inside ``<think>...</think>`` and then gives a ``\\boxed{}`` answer (the layout the authors' multimodal
prompt asks for). With ``format_weight = 0.1`` this is their ``0.9 * accuracy + 0.1 * format``; the score stays in
[0, 1]. ``acc`` is the answer's correctness alone, and it is what A-GRAE counts as success (the project's one
success rule), so the format bonus shapes the reward but never turns a wrong answer into a success.

Use from verl: ``reward.custom_reward_function.path=pkg://verl_agrae.reward.format_reward``,
``reward.custom_reward_function.name=accuracy_and_format_score``,
``+reward.custom_reward_function.reward_kwargs.format_weight=0.1``.
"""

from __future__ import annotations

import re
from typing import Any

from verl_agrae.reward.score import compute_score

__all__ = ["FORMAT_PATTERN", "accuracy_and_format_score", "format_ok"]

#: Reasoning in a think block, then a boxed answer (whole response, across lines).
FORMAT_PATTERN = re.compile(r"\s*<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)


def format_ok(solution_str: str) -> bool:
    """True when the response has the ``<think>...</think> ... \\boxed{...}`` layout."""
    return FORMAT_PATTERN.fullmatch(solution_str or "") is not None


def accuracy_and_format_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> dict[str, Any]:
    """verl's custom reward function: ``(1 - format_weight) * acc + format_weight * format_ok``.

    Args:
        data_source, solution_str, ground_truth, extra_info: as for :func:`verl_agrae.reward.compute_score`.
        **kwargs: ``format_weight`` (in [0, 1], default 0.1); the rest goes to ``compute_score``.

    Returns:
        ``compute_score``'s dict with ``score`` replaced by the blend and ``format`` added.

    Raises:
        ValueError: ``format_weight`` outside [0, 1], or combined with DAPO's +1/-1 scores.
    """
    weight = float(kwargs.pop("format_weight", 0.1))
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"reward_kwargs.format_weight must be in [0, 1], got {weight}")
    if kwargs.get("dapo"):
        raise ValueError("reward_kwargs.format_weight blends [0, 1] scores; it cannot be combined with dapo=true")
    result = compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    fmt = format_ok(solution_str)
    result["format"] = fmt
    result["score"] = (1.0 - weight) * float(result["acc"]) + weight * float(fmt)
    return result
