"""Per-step A-GRAE diagnostics from the advantage records (see :mod:`verl_agrae.trainer.advantage_recorder`).

The same :func:`verl_agrae.diagnostics.batch_diagnostics` describes every estimator, so a plain GRPO run
gets the same ``agrae/...`` curves for comparison (its positive/negative sums balance, by construction).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from verl_agrae.advantage import group_ids_from_index, success_from_rewards
from verl_agrae.diagnostics import batch_diagnostics
from verl_agrae.trainer.advantage_recorder import load_records

__all__ = ["record_diagnostics", "attempt_diagnostics"]


def record_diagnostics(record: dict[str, Any]) -> dict[str, float]:
    """Diagnostics of one recorded estimator call.

    Args:
        record: ``token_level_rewards`` (bs, L), ``response_mask`` (bs, L), ``index`` (bs,), ``advantages``
            (bs, L), ``options`` (the ``algorithm`` options the estimator saw).
    """
    mask = record["response_mask"].to(torch.float64)
    valid = mask.sum(-1) > 0
    rewards = (record["token_level_rewards"].to(torch.float64) * mask).sum(-1)
    # Outcome estimators broadcast one value over the response: its token mean is the sequence advantage.
    adv = (record["advantages"].to(torch.float64) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    agrae = (record.get("options") or {}).get("agrae") or {}
    threshold = agrae.get("success_threshold")
    try:
        success = success_from_rewards(rewards, valid, threshold)
    except ValueError:
        success = (rewards > 0).to(torch.float64) * valid
    index = record.get("index") or [str(i) for i in range(len(rewards))]
    group_ids, _ = group_ids_from_index(list(index), len(rewards))
    alpha = agrae.get("alpha") if record.get("estimator") == "agrae" else None
    return batch_diagnostics(adv, success, group_ids, valid, alpha=alpha)


def attempt_diagnostics(attempt_dir: Path) -> dict[int, dict[str, float]]:
    """``{step: diagnostics}`` for one attempt; call ``k`` maps to step ``start_step + k - 1``."""
    meta_path = Path(attempt_dir) / "attempt.json"
    start = json.loads(meta_path.read_text())["start_step"] if meta_path.is_file() else 1
    records = load_records(Path(attempt_dir) / "advantages")
    return {start + k: record_diagnostics(r) for k, r in enumerate(records)}
