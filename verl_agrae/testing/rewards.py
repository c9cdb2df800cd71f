"""Deterministic rewards for runs of the random tiny model (its answers are never right).

Both return verl's reward dict (``score``, ``acc``). With ``dapo=True`` (DAPO configs pass it through
``reward_kwargs``) the score is DAPO's +1/-1. With ``log_path`` every call is appended to that file as one
JSON line (prompt index, ground truth, ``acc``), so a test can rebuild every group that was generated.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["always_correct_reward", "even_answer_or_parity_reward", "parity_reward"]


def _result(
    ok: bool,
    ground_truth: str,
    extra_info: dict | None,
    dapo: bool = False,
    log_path: str | None = None,
    **_: Any,
) -> dict:
    if log_path:
        line = json.dumps({"index": (extra_info or {}).get("index"), "ground_truth": str(ground_truth), "acc": ok})
        # One write per line with O_APPEND: lines from several reward workers do not interleave.
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    score = (1.0 if ok else -1.0) if dapo else float(ok)
    return {"score": score, "acc": ok}


def parity_reward(data_source: str, solution_str: str, ground_truth: str, extra_info=None, **kwargs: Any) -> dict:
    """Success when the response has an even number of characters: groups mix successes and failures."""
    return _result(len(solution_str) % 2 == 0, ground_truth, extra_info, **kwargs)


def even_answer_or_parity_reward(data_source: str, solution_str: str, ground_truth: str, extra_info=None, **kwargs):
    """Every response to a prompt whose answer is even succeeds (all-solved groups); others by length parity."""
    ok = int(ground_truth) % 2 == 0 or len(solution_str) % 2 == 0
    return _result(ok, ground_truth, extra_info, **kwargs)


def always_correct_reward(data_source: str, solution_str: str, ground_truth: str, extra_info=None, **kwargs: Any):
    """Every response succeeds: under dynamic sampling every group is all-solved (the generation cap's worst case)."""
    return _result(True, ground_truth, extra_info, **kwargs)
