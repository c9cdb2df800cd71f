"""Read the per-step advantage records our trainer modes write (``run.record_advantages``), for tests and analysis.

One file per training step, ``<attempt>/advantages/step-0000k.pt``, written by
:mod:`verl_agrae.integration.trainers` (see :func:`~verl_agrae.integration.trainers.step_record` for the keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from verl_agrae.advantage import compute_agrae_outcome_advantage
from verl_agrae.config import AgraeConfig

__all__ = ["load_records", "recompute_advantages"]


def load_records(record_dir: str | Path) -> list[dict[str, Any]]:
    """All records in ``record_dir``, in step order."""
    return [torch.load(p, weights_only=False) for p in sorted(Path(record_dir).glob("step-*.pt"))]


def recompute_advantages(record: dict[str, Any]) -> torch.Tensor:
    """An independent call of the pure estimator on a record's inputs, options and out-of-batch groups.

    Returns:
        ``(bs, L)`` token-level advantages, to compare with ``record["advantages"]`` (what verl trained on).
    """
    advantages, _ = compute_agrae_outcome_advantage(
        record["token_level_rewards"],
        record["response_mask"],
        record["index"],
        AgraeConfig(**record["options"]),
        extra_group_success=record["extra_group_success"] if record["mu_source"] == "generated" else None,
        acc=record.get("acc"),
    )
    return advantages
