"""Record what verl's trainer hands to, and gets back from, the advantage estimator (per training step).

verl computes advantages inside its TaskRunner Ray actor and logs only their mean/min/max. To plot the
A-GRAE diagnostics per step and to check, in tests, that the advantages verl trained on came from our
estimator, this module wraps the estimator verl will call, in the TaskRunner only:

- ``agrae`` (and any other registered name): what ``core_algos.get_adv_estimator_fn`` returns, which
  ``verl/trainer/ppo/ray_trainer.py: compute_advantage`` calls at every step;
- ``grpo``: ``core_algos.compute_grpo_outcome_advantage``, which ``compute_advantage`` calls directly.

It is imported in every verl process through ``VERL_USE_EXTERNAL_MODULES`` and does nothing unless
``VERL_AGRAE_RECORD_DIR`` is set. Each call writes ``call-00001.pt`` ... (``torch.save`` of a dict with
``token_level_rewards``, ``response_mask``, ``index``, ``advantages``, ``estimator``, ``options``, and for
``agrae`` the ``mu`` it used and the batch's own ``mu_batch``)
atomically; the trainer entry point maps call ``k`` of an attempt to training step ``start + k - 1``.
A-GRAE runs also log their diagnostics live (``verl_agrae.agrae_trainer``); the records prove, in tests, which
estimator produced the trained advantages and give GRPO runs the same diagnostics for comparison.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["RECORD_DIR_ENV", "RECORD_ESTIMATOR_ENV", "install", "load_records"]

RECORD_DIR_ENV = "VERL_AGRAE_RECORD_DIR"
RECORD_ESTIMATOR_ENV = "VERL_AGRAE_RECORD_ESTIMATOR"

_counter = itertools.count(1)
_installed: str | None = None


def _options(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    out: dict[str, Any] = {}
    for key in ("adv_estimator", "norm_adv_by_std_in_grpo"):
        if isinstance(config, DictConfig):
            out[key] = OmegaConf.select(config, key, default=None)
        else:
            out[key] = getattr(config, key, None)
    agrae = config.get("agrae", None) if hasattr(config, "get") else None
    if agrae is not None:
        out["agrae"] = OmegaConf.to_container(agrae, resolve=True) if isinstance(agrae, DictConfig) else dict(agrae)
    return out


def _agrae_state(name: str) -> dict[str, float]:
    """mu as the estimator used it (over every generated group) and over the batch alone (``agrae`` only)."""
    if name != "agrae":
        return {}
    from verl_agrae.register import last_result

    result = last_result()
    return {} if result is None else {"mu": float(result.mu), "mu_batch": float(result.mu_batch)}


def _write(record_dir: Path, record: dict[str, Any]) -> None:
    record_dir.mkdir(parents=True, exist_ok=True)
    k = next(_counter)
    target = record_dir / f"call-{k:05d}.pt"
    tmp = target.with_suffix(".pt.tmp")
    torch.save(record, tmp)
    os.replace(tmp, target)


def _recording(fn: Callable[..., Any], name: str, record_dir: Path) -> Callable[..., Any]:
    @functools.wraps(fn)  # keeps __module__/__qualname__, so verl_agrae.register still sees its estimator
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        try:
            index = kwargs.get("index")
            _write(
                record_dir,
                {
                    "estimator": name,
                    "token_level_rewards": kwargs["token_level_rewards"].detach().cpu().clone(),
                    "response_mask": kwargs["response_mask"].detach().cpu().clone(),
                    "index": [str(u) for u in index] if index is not None else None,
                    "advantages": out[0].detach().cpu().clone(),
                    "options": _options(kwargs.get("config"))
                    or {"norm_adv_by_std_in_grpo": kwargs.get("norm_adv_by_std_in_grpo")},
                    **_agrae_state(name),
                },
            )
        except Exception:  # recording must never break training
            logger.exception("could not record the %s advantage call", name)
        return out

    wrapper._verl_agrae_recorded = fn  # type: ignore[attr-defined]
    return wrapper


def install() -> str | None:
    """Wrap the estimator named by ``VERL_AGRAE_RECORD_ESTIMATOR`` when ``VERL_AGRAE_RECORD_DIR`` is set.

    Returns:
        The wrapped estimator's name, or None when recording is off.
    """
    global _installed
    record_dir = os.environ.get(RECORD_DIR_ENV)
    name = os.environ.get(RECORD_ESTIMATOR_ENV, "agrae")
    if not record_dir or _installed == name:
        return _installed
    from verl.trainer.ppo import core_algos

    if name == "grpo":
        core_algos.compute_grpo_outcome_advantage = _recording(
            core_algos.compute_grpo_outcome_advantage, name, Path(record_dir)
        )
    else:
        # Wrap the lookup, not the registry entry: our entry point (re)registers `agrae` after this module
        # runs, and would replace a wrapped entry with the bare estimator.
        lookup = core_algos.get_adv_estimator_fn

        @functools.wraps(lookup)
        def get_adv_estimator_fn(name_or_enum: Any) -> Callable[..., Any]:
            fn = lookup(name_or_enum)
            key = getattr(name_or_enum, "value", name_or_enum)
            return _recording(fn, name, Path(record_dir)) if key == name else fn

        get_adv_estimator_fn._verl_agrae_recorded = lookup  # type: ignore[attr-defined]
        core_algos.get_adv_estimator_fn = get_adv_estimator_fn
    _installed = name
    return name


def load_records(record_dir: Path) -> list[dict[str, Any]]:
    """All records of one attempt, in call order."""
    return [torch.load(p, weights_only=False) for p in sorted(Path(record_dir).glob("call-*.pt"))]


install()
