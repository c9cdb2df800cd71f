"""Our vLLM general plugin (entry-point group ``vllm.general_plugins`` in setup.py).

vLLM imports every general plugin in each of its processes (engine core, workers) before it loads a model. Ours
does nothing unless :data:`LIVE_WEIGHTS_ENV` is ``1`` and vLLM runs on its CPU platform: then linear layers keep
computing on their live weights (:func:`~verl_agrae.integration.patches.vllm_cpu_packs_linear_weights`), so verl's
in-place weight updates reach the model. ``verl-agrae train`` sets the variable for CPU runs with
``actor_rollout_ref.rollout.name=vllm``; evaluation leaves it unset and keeps vLLM's faster packed weights.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["LIVE_WEIGHTS_ENV", "register"]

#: Set to ``1`` in the processes of a vLLM engine whose weights verl updates during training.
LIVE_WEIGHTS_ENV = "VERL_AGRAE_VLLM_LIVE_WEIGHTS"


def register() -> None:
    """vLLM's plugin hook (may run several times per process; the patch is idempotent)."""
    if os.environ.get(LIVE_WEIGHTS_ENV, "").strip() != "1":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from verl_agrae.integration.patches import vllm_cpu_packs_linear_weights

    vllm_cpu_packs_linear_weights()
    logger.info("verl-agrae: vLLM CPU linear layers compute on live weights (verl updates them in place)")
