"""The bridge into verl: registers A-GRAE as the advantage estimator ``agrae``, and checks that it is.

:func:`register` is called by :mod:`verl_agrae.plugin`, the target of our ``verl.plugins`` entry point
(see setup.py): ``import verl`` imports that module in every process that imports verl — the driver, Ray's
TaskRunner actor (where ``compute_advantage`` runs) and every worker — so ``algorithm.adv_estimator=agrae``
resolves wherever verl looks it up. verl swallows exceptions raised by plugins (logged at DEBUG), so
launchers call :func:`ensure_registered`, which fails loudly with the reason. Importing this module has no
side effect, so the check cannot pass merely because it was imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from verl_agrae.advantage import AgraeResult, agrae_sequence_advantage, to_token_level
from verl_agrae.config import AgraeConfig

__all__ = [
    "ESTIMATOR_NAME",
    "agrae_advantage_estimator",
    "ensure_registered",
    "groups_outside_batch",
    "last_result",
    "register",
]

logger = logging.getLogger(__name__)

ESTIMATOR_NAME = "agrae"
ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_NAME = "agrae"
PLUGIN_MODULE = "verl_agrae.plugin"

_last: AgraeResult | None = None
_outside_batch: list[float] | None = None


@torch.no_grad()
def agrae_advantage_estimator(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    mu: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A-GRAE with the call signature verl uses for registered estimators.

    verl's ``compute_advantage`` calls registered estimators with keyword arguments only and does not pass
    ``epsilon``, ``norm_adv_by_std_in_grpo`` or the step; options are therefore read from ``config`` (the
    ``algorithm`` node). Extra keyword arguments verl may add (``reward_baselines``, ...) are ignored.

    Args:
        token_level_rewards: ``(bs, L)``.
        response_mask: ``(bs, L)``.
        index: ``(bs,)`` numpy object array of group uids (verl's ``non_tensor_batch["uid"]``).
        config: verl's ``algorithm`` config node (options under ``algorithm.agrae``).
        mu: batch mean success rate to use instead of this batch's own (our trainer passes the value
            measured before DAPO's dynamic-sampling filter).

    Returns:
        ``(advantages, returns)``, both ``(bs, L)``.
    """
    global _last
    opts = AgraeConfig.from_algorithm(config)
    extra = _outside_batch if mu is None else None
    result = agrae_sequence_advantage(
        token_level_rewards, response_mask, index, mu=mu, extra_group_success=extra, **opts.estimator_kwargs()
    )
    _last = result
    adv = to_token_level(result.advantages, response_mask)
    return adv, adv


@contextmanager
def groups_outside_batch(success_rates: Sequence[float]) -> Iterator[None]:
    """Within this block, ``agrae`` calls count these groups in ``mu`` (one success rate per group).

    verl calls registered estimators with a fixed set of arguments, so a trainer that knows about groups
    generated for the step but dropped before the batch (DAPO's dynamic sampling) hands them over this way.
    """
    global _outside_batch
    previous, _outside_batch = _outside_batch, [float(p) for p in success_rates]
    try:
        yield
    finally:
        _outside_batch = previous


def last_result() -> AgraeResult | None:
    """The :class:`AgraeResult` of the latest ``agrae`` call in this process (for logging hooks), or None."""
    return _last


def _is_ours(fn: Any) -> bool:
    # Compare by qualified name, not identity: a module re-import must not count as a foreign estimator.
    return getattr(fn, "__module__", None) == __name__ and getattr(fn, "__qualname__", None) == (
        agrae_advantage_estimator.__qualname__
    )


def register() -> None:
    """Register ``agrae`` in verl's estimator registry (idempotent)."""
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
    """Why verl's plugin loader would not have imported this module, or None if it should have."""
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
    if eps[0].value != PLUGIN_MODULE:
        return f"entry point {ENTRY_POINT_NAME!r} points to {eps[0].value!r}, not {PLUGIN_MODULE!r}"
    return None


def ensure_registered() -> None:
    """Fail loudly unless verl's plugin mechanism made ``agrae`` available in this process.

    Imports verl (which loads plugins) and checks the registry. It does not register by itself: what matters
    is that the entry point works, because Ray workers and the TaskRunner rely on it, not on this process.

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

            importlib.import_module(PLUGIN_MODULE)
        except Exception as e:  # report the swallowed plugin error itself
            reason = f"importing the plugin failed: {type(e).__name__}: {e}"
        else:
            reason = "the plugin imports cleanly now but verl did not load it (was verl imported before install?)"
    raise RuntimeError(f"advantage estimator {ESTIMATOR_NAME!r} is not registered with verl: {reason}")
