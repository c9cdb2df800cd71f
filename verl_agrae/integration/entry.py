"""The ``verl.plugins`` entry point of verl-agrae (setup.py): the only code that runs on ``import verl``.

verl imports this module in every process that imports verl (the driver, Ray's TaskRunner actor, every
worker), which is how our pieces reach the processes that look them up by name. It is the project's one
activation route; nothing else registers or patches at import time. Keep it cheap:

- the ``agrae`` advantage estimator, the ``cpu`` platform, the ``hf`` rollout backend and the ``gloo``
  checkpoint engine are registered at once (:mod:`.estimator`, :mod:`.backends`; no model loading), and the
  CPU platform is activated with its patches when ``VERL_PLATFORM=cpu``;
- verl's vLLM adapter is prepared (:mod:`.patches` 6 and 7): vLLM's CPU build is found under its distribution
  name, and verl's weight transfer gets timeouts when a process imports it;
- verl's agent loop gets the generic Continuous Token builder registered for ``llama`` (:mod:`.patches` 9), which
  silences a warning it would print for every request;
- our trainer modes (``agrae_sync``, ``agrae_separate_async``, :mod:`.trainers`) import verl's whole V1
  trainer stack, which only the TaskRunner needs. Their registration is deferred to the moment a process
  imports ``verl.trainer.ppo.v1`` (where ``get_trainer_cls`` lives), through a one-shot import hook, so
  ``trainer.v1.trainer_mode=agrae_sync`` works from verl's own ``main_ppo`` too and workers never pay for it.

verl swallows a plugin's exceptions (DEBUG log); each part is therefore guarded and logged here, and the
launchers check what they need explicitly (:func:`.estimator.ensure_registered`, ``verl-agrae doctor``).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_V1_PACKAGE = "verl.trainer.ppo.v1"


def _register_trainers() -> None:
    try:
        from verl_agrae.integration.trainers import register_trainers

        register_trainers()
    except Exception:  # the estimator must stay usable even if verl's trainer internals moved
        logger.exception("verl-agrae: could not register the agrae_* trainer modes")


def activate() -> None:
    """Everything the entry point does (idempotent): register, activate the CPU platform if selected, hook."""
    from verl_agrae.integration import backends, patches
    from verl_agrae.integration.estimator import register_estimator
    from verl_agrae.integration.import_hooks import on_import

    register_estimator()
    # Each backend in its own try: a failure there must not take the estimator down with it.
    for name, register in backends.REGISTRATIONS.items():
        try:
            register()
        except Exception:
            logger.exception("verl-agrae: could not register %s", name)
    on_import(_V1_PACKAGE, after=_register_trainers)
    try:  # verl's vLLM adapter: vLLM's CPU build found by its distribution name; bounded weight-sync waits
        patches.verl_looks_up_vllm_by_distribution_name()
        on_import(patches.WEIGHT_TRANSFER_MODULE, after=patches.weight_sync_waits_forever)
    except Exception:
        logger.exception("verl-agrae: could not prepare verl's vLLM rollout patches")
    # verl's agent loop warns per request for Llama-type models unless their (generic) builder is registered.
    on_import(patches.CONTINUOUS_TOKEN_MODULE, after=patches.continuous_token_warning_for_llama)


activate()
