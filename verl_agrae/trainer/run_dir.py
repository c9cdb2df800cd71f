"""The run directory every training run leaves behind, and resuming into it safely.

Layout (``run.dir``)::

    config.yaml                 resolved config of the first attempt (what the run *is*)
    checkpoints/                verl checkpoints (trainer.default_local_dir)
    rollouts/ validation/       verl's generation dumps (trainer.rollout_data_dir / validation_data_dir)
    attempts/attempt-01/        one folder per launch: config.yaml, metrics.jsonl (verl's file logger,
                                which truncates its file, hence one per attempt), checkpointed_metrics.jsonl
                                (each checkpointed step's metrics, written before its checkpoint),
                                advantages/ (records)
    metrics.jsonl               all attempts merged: one line per step, later attempts win per key
    plots/*.png                 per-step plots (see verl_agrae.trainer.plots)
    summary.json                validation accuracy before/after, steps, paths

A resumed run must be the same experiment: keys that may differ between attempts are listed in
:data:`RESUME_SAFE_KEYS` (more steps, logging, Ray sizing); any other difference is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from verl_agrae.atomic import atomic_write_text

#: Metrics rows our trainer modes write right before each checkpoint (beside verl's file-logger output).
CHECKPOINTED_METRICS_FILE = "checkpointed_metrics.jsonl"
#: Environment variable naming the directory of the per-step advantage records (``run.record_advantages``).
RECORD_DIR_ENV = "VERL_AGRAE_RECORD_DIR"

__all__ = [
    "RESUME_SAFE_KEYS",
    "ResumeConfigMismatch",
    "RunDir",
    "config_differences",
    "merge_metrics",
    "read_jsonl",
]

#: Dotted prefixes that may change when a run is resumed.
RESUME_SAFE_KEYS: tuple[str, ...] = (
    "trainer.total_training_steps",
    "trainer.total_epochs",
    "trainer.resume_mode",
    "trainer.resume_from_path",
    "trainer.val_before_train",
    "trainer.test_freq",
    "trainer.save_freq",
    "trainer.logger",
    "trainer.log_val_generations",
    "trainer.max_actor_ckpt_to_keep",
    "trainer.max_critic_ckpt_to_keep",
    "ray_kwargs",
    "run.plots",
    "run.validate_on_resume",
    "actor_rollout_ref.rollout.agent.num_workers",
    "reward.num_workers",
    "data.dataloader_num_workers",
)


class ResumeConfigMismatch(ValueError):
    """The run directory holds a run made with a different config."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _safe(key: str, safe: Iterable[str]) -> bool:
    return any(key == s or key.startswith(s + ".") for s in safe)


def config_differences(old: dict[str, Any], new: dict[str, Any], safe: Iterable[str] = RESUME_SAFE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring ``safe`` prefixes."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if not _safe(k, safe) and a.get(k, "<absent>") != b.get(k, "<absent>"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a torn last line (crash mid-write) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def merge_metrics(attempt_files: Iterable[Path]) -> list[dict[str, Any]]:
    """Merge verl file-logger outputs (``{"step": s, "data": {...}}`` lines) of successive attempts.

    Returns:
        One ``{"step": s, **metrics}`` dict per step, sorted by step; for a step logged by several
        attempts (validation at the resume step, a step redone after a crash) later attempts win per key.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for path in attempt_files:
        for row in read_jsonl(Path(path)):
            step = int(row.get("step", 0))
            by_step.setdefault(step, {}).update(row.get("data", {}))
    return [{"step": s, **by_step[s]} for s in sorted(by_step)]


class RunDir:
    """Paths and bookkeeping of one run directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = root = Path(root).expanduser().resolve()
        self.config_path = root / "config.yaml"
        self.checkpoints = root / "checkpoints"
        self.rollouts = root / "rollouts"
        self.validation = root / "validation"
        self.data = root / "data"
        self.plots = root / "plots"
        self.metrics_path = root / "metrics.jsonl"
        self.summary_path = root / "summary.json"

    def attempts(self) -> list[Path]:
        return sorted(p for p in (self.root / "attempts").glob("attempt-*") if p.is_dir())

    def new_attempt(self) -> Path:
        number = len(self.attempts()) + 1
        path = self.root / "attempts" / f"attempt-{number:02d}"
        path.mkdir(parents=True, exist_ok=False)
        return path

    # -- state -----------------------------------------------------------------------------------
    def latest_checkpoint_step(self) -> int:
        """Step of the latest complete checkpoint (verl's ``latest_checkpointed_iteration.txt``), else 0."""
        marker = self.checkpoints / "latest_checkpointed_iteration.txt"
        try:
            return int(marker.read_text().strip())
        except (OSError, ValueError):
            return 0

    def check_resume(self, config: DictConfig | dict[str, Any]) -> None:
        """Refuse to continue a run directory that was made with a different config.

        Raises:
            ResumeConfigMismatch: naming the keys that differ (at most 10).
        """
        if not self.config_path.is_file():
            return
        old = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        new = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
        diff = config_differences(old, new)
        if diff:
            shown = ", ".join(diff[:10]) + (f" and {len(diff) - 10} more" if len(diff) > 10 else "")
            raise ResumeConfigMismatch(
                f"run directory {self.root} holds a run made with a different config ({shown} differ). "
                "Use a new run.dir, or rerun with the original settings to resume it."
            )

    def write_config(self, config: DictConfig, attempt: Path) -> None:
        text = OmegaConf.to_yaml(config, resolve=True)
        atomic_write_text(attempt / "config.yaml", text)
        if not self.config_path.is_file():
            atomic_write_text(self.config_path, text)

    def merge_metrics(self) -> list[dict[str, Any]]:
        """Rewrite ``metrics.jsonl`` from every attempt's files; returns the merged rows.

        Per attempt, the rows our trainer modes write at checkpoint time come first and verl's own rows second, so
        verl's win where both exist; a step whose checkpoint was saved but whose final log was lost (a crash in
        between) keeps the metrics it had at the checkpoint.
        """
        files = [a / name for a in self.attempts() for name in (CHECKPOINTED_METRICS_FILE, "metrics.jsonl")]
        rows = merge_metrics(files)
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, default=float) + "\n" for r in rows))
        return rows

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str) + "\n")
