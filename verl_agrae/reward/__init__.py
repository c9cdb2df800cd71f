"""Math reward that is correct and never hangs.

Public API:

- :func:`extract_answer` / :func:`find_answer`: the final answer in a model output (the last box group, or a later
  ``Answer:`` / ``####`` / "the answer is" statement), in the ``recall`` (default) or ``strict`` mode.
- :func:`compute_score`: verl's custom reward function signature, returns ``score``/``acc``/``pred``/``timeout``.
- :func:`score_batch`: many items in parallel, same results as :func:`compute_score`.
- :class:`GradingPool`: worker processes with a hard per-item wall-clock timeout.

Imports are absolute so that verl can also load this file by path (``custom_reward_function.path``); the
dedicated entry file is ``verl_entry.py`` (see :func:`verl_entry_path`).
"""

from __future__ import annotations

from pathlib import Path

from verl_agrae.reward.extract import (
    EXTRACTION_MODES,
    Extraction,
    extract_answer,
    final_boxed,
    find_answer,
    last_boxed,
    last_integer,
)
from verl_agrae.reward.normalize import fast_equal, normalize_answer
from verl_agrae.reward.pool import (
    CheckResult,
    GradingPool,
    PoolStats,
    get_default_pool,
    shutdown_default_pool,
)
from verl_agrae.reward.score import ARITHMETIC, compute_score, score_batch, score_result

__all__ = [
    "ARITHMETIC",
    "EXTRACTION_MODES",
    "CheckResult",
    "Extraction",
    "GradingPool",
    "PoolStats",
    "compute_score",
    "extract_answer",
    "fast_equal",
    "final_boxed",
    "find_answer",
    "get_default_pool",
    "last_boxed",
    "last_integer",
    "normalize_answer",
    "score_batch",
    "score_result",
    "shutdown_default_pool",
    "verl_entry_path",
]


def verl_entry_path() -> str:
    """Absolute path of the file to give verl as ``reward.custom_reward_function.path`` (name: compute_score)."""
    return str(Path(__file__).resolve().with_name("verl_entry.py"))
