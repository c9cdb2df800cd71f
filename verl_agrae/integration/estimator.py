"""The ``agrae`` advantage estimator as verl calls it, and the explicit per-step exchange with our trainer.

verl calls a registered estimator with a fixed set of keyword arguments (``token_level_rewards``,
``response_mask``, ``index``, ``config``, sometimes more) and keeps only ``(advantages, returns)``. Two things
the trainer knows must still reach the estimator and come back:

- in: the groups generated for the step but left out of the batch (DAPO's dynamic sampling drops the
  all-solved and all-failed ones, reported by verl as ``{shared filter value: count}``), so that ``mu`` is the
  mean over all generated groups. The estimator turns them into success rates with the options it parsed, by
  the same rule as the batch's rows: the options are read once per step, here;
- out: the full :class:`~verl_agrae.advantage.AgraeResult` (``mu``, where it came from, the suppression factor,
  the options used) for the step's metrics and records.

They travel in an :class:`AgraeStep` that the trainer creates for the step and binds around verl's
``compute_advantage`` call with :func:`bind_step`. The binding is a :class:`contextvars.ContextVar`: it holds
no state between steps (it is reset when the block ends) and is local to the calling thread / task.

Where no step is bound — verl's own ``main_ppo`` with another trainer mode, the legacy trainer, or advantages
computed in a process other than the trainer's (a Ray worker, a subprocess) — the estimator still computes
A-GRAE, with ``mu`` from the batch alone (``result.mu_source == "batch"``), and nobody receives the result. Our
trainer notices: a bound step whose result never arrived raises (see ``integration/trainers.py``), so a run
never logs metrics of a computation that did not happen in its process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from verl_agrae.advantage import AgraeResult, agrae_sequence_advantage, dropped_group_success, to_token_level
from verl_agrae.config import AgraeConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENTRY_POINT_MODULE",
    "ENTRY_POINT_NAME",
    "ESTIMATOR_NAME",
    "AgraeStep",
    "agrae_advantage_estimator",
    "bind_step",
    "ensure_registered",
    "register_estimator",
]

logger = logging.getLogger(__name__)

ESTIMATOR_NAME = "agrae"
ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_NAME = "agrae"
ENTRY_POINT_MODULE = "verl_agrae.integration.entry"


@dataclass
class AgraeStep:
    """What the trainer and the estimator exchange for one training step.

    Attributes:
        dropped_groups: verl's ``{shared filter-metric value: group count}`` of the groups generated for the step
            but not in the batch (in; empty without dynamic sampling). Used only when ``left_out_success`` is None.
        left_out_success: success rates of every group generated for the step but not in the batch, read by our
            replay buffer with the one success rule (in; None where verl's own buffer ran).
        acc: ``(bs,)`` the reward function's ``acc`` of each row, or None when it reports none (in).
        result: the estimator's result for the step, set by the estimator (out; None until it ran).
        inputs: ``token_level_rewards``, ``response_mask`` and ``index`` exactly as verl passed them (out; for
            the per-step records, references only, no copies).
        advantages: the ``(bs, L)`` advantages returned to verl (out; a reference).
    """

    dropped_groups: Mapping[Any, int] = field(default_factory=dict)
    left_out_success: list[float] | None = None
    acc: torch.Tensor | None = None
    result: AgraeResult | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    advantages: torch.Tensor | None = None


_current_step: ContextVar[AgraeStep | None] = ContextVar("verl_agrae_step", default=None)


@contextmanager
def bind_step(step: AgraeStep) -> Iterator[AgraeStep]:
    """Within this block, ``agrae`` calls in this thread/task read from and report to ``step``."""
    token = _current_step.set(step)
    try:
        yield step
    finally:
        _current_step.reset(token)


@torch.no_grad()
def agrae_advantage_estimator(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A-GRAE with the call signature verl uses for registered estimators.

    Options come from ``config`` (verl's ``algorithm`` node; A-GRAE's under ``algorithm.agrae``), since verl does
    not pass ``epsilon`` or ``norm_adv_by_std_in_grpo`` to registered estimators. Extra keyword arguments verl may
    add (``reward_baselines``, ...) are ignored.

    Args:
        token_level_rewards: ``(bs, L)``.
        response_mask: ``(bs, L)``.
        index: ``(bs,)`` numpy object array of group uids (verl's ``non_tensor_batch["uid"]``).
        config: verl's ``algorithm`` config node.

    Returns:
        ``(advantages, returns)``, both ``(bs, L)``.
    """
    options = AgraeConfig.from_algorithm(config)
    step = _current_step.get()
    extra, acc = None, None
    if step is not None:
        extra = step.left_out_success
        if extra is None:
            extra = dropped_group_success(step.dropped_groups, options.success_threshold)
        acc = step.acc
    result = agrae_sequence_advantage(
        token_level_rewards, response_mask, index, options, extra_group_success=extra, acc=acc
    )
    adv = to_token_level(result.advantages, response_mask)
    if step is not None:
        step.result, step.advantages = result, adv
        step.inputs = {"token_level_rewards": token_level_rewards, "response_mask": response_mask, "index": index}
    return adv, adv


def _is_ours(fn: Any) -> bool:
    # Compare by qualified name, not identity: a module re-import must not count as a foreign estimator.
    return getattr(fn, "__module__", None) == __name__ and getattr(fn, "__qualname__", None) == (
        agrae_advantage_estimator.__qualname__
    )


def register_estimator() -> None:
    """Register ``agrae`` in verl's estimator registry (idempotent).

    Raises:
        ValueError: another package registered a different estimator under the name.
    """
    from verl.trainer.ppo import core_algos

    current = core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME)
    if current is not None and _is_ours(current):
        if current is not agrae_advantage_estimator:
            core_algos.ADV_ESTIMATOR_REGISTRY[ESTIMATOR_NAME] = agrae_advantage_estimator
        return
    if current is not None:
        raise ValueError(f"verl already has a different advantage estimator named {ESTIMATOR_NAME!r}: {current!r}")
    core_algos.register_adv_est(ESTIMATOR_NAME)(agrae_advantage_estimator)
    logger.debug("registered advantage estimator %r", ESTIMATOR_NAME)


def _entry_point_problem() -> str | None:
    """Why verl's plugin loader would not have imported our entry point, or None if it should have."""
    from importlib.metadata import entry_points

    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if policy == "none":
        return "VERL_USE_EXTERNAL_PLUGINS=none disables verl's plugin loading"
    if policy != "auto" and ENTRY_POINT_NAME not in {p.strip() for p in policy.split(",")}:
        return f"VERL_USE_EXTERNAL_PLUGINS={policy!r} does not list {ENTRY_POINT_NAME!r}"
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == ENTRY_POINT_NAME]
    if not eps:
        return (
            f"no {ENTRY_POINT_GROUP!r} entry point named {ENTRY_POINT_NAME!r} is installed in this environment "
            "(is verl-agrae pip-installed in the Python that runs verl?)"
        )
    if eps[0].value != ENTRY_POINT_MODULE:
        return f"entry point {ENTRY_POINT_NAME!r} points to {eps[0].value!r}, not {ENTRY_POINT_MODULE!r}"
    return None


def ensure_registered() -> None:
    """Fail loudly unless verl's plugin mechanism made ``agrae`` available in this process.

    Imports verl (which loads plugins) and checks the registry. It does not register by itself: what matters is
    that the entry point works, because Ray workers and the TaskRunner rely on it, not on this process.

    Raises:
        RuntimeError: naming the reason (plugins disabled, package not installed, import error, foreign
            estimator under the same name).
    """
    import verl  # noqa: F401  (importing verl runs its plugin loader)
    from verl.trainer.ppo import core_algos

    fn = core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME)
    if fn is not None and _is_ours(fn):
        return
    if fn is not None:
        raise RuntimeError(f"verl's estimator {ESTIMATOR_NAME!r} is {fn!r}, not verl-agrae's")
    reason = _entry_point_problem()
    if reason is None:
        # The entry point exists and is allowed: importing it must have failed; show the real error.
        try:
            import importlib

            importlib.import_module(ENTRY_POINT_MODULE)
        except Exception as e:  # report the swallowed plugin error itself
            reason = f"importing the plugin failed: {type(e).__name__}: {e}"
        else:
            reason = "the plugin imports cleanly now but verl did not load it (was verl imported before install?)"
    raise RuntimeError(f"advantage estimator {ESTIMATOR_NAME!r} is not registered with verl: {reason}")
