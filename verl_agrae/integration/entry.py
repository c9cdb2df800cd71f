"""The ``verl.plugins`` entry point of verl-agrae (setup.py): the only code that runs on ``import verl``.

verl imports this module in every process that imports verl (the driver, Ray's TaskRunner actor, every
worker), which is how our pieces reach the processes that look them up by name. It is the project's one
activation route; nothing else registers or patches at import time. Keep it cheap:

- the ``agrae`` advantage estimator, the ``cpu`` platform, the ``hf`` rollout backend and the ``gloo``
  checkpoint engine are registered at once (:mod:`.estimator`, :mod:`.backends`; no model loading), and the
  CPU platform is activated with its patches when ``VERL_PLATFORM=cpu``;
- our trainer modes (``agrae_sync``, ``agrae_separate_async``, :mod:`.trainers`) import verl's whole V1
  trainer stack, which only the TaskRunner needs. Their registration is deferred to the moment a process
  imports ``verl.trainer.ppo.v1`` (where ``get_trainer_cls`` lives), through a one-shot import hook, so
  ``trainer.v1.trainer_mode=agrae_sync`` works from verl's own ``main_ppo`` too and workers never pay for it.

verl swallows a plugin's exceptions (DEBUG log); each part is therefore guarded and logged here, and the
launchers check what they need explicitly (:func:`.estimator.ensure_registered`, ``verl-agrae doctor``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

_V1_PACKAGE = "verl.trainer.ppo.v1"


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``callback`` right after module ``name`` has been executed, the first time it is imported."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name, self.callback, self._loader = name, callback, None

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; also lets the real finder answer below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader, self._loader = self, spec.loader
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Hand the module its real loader back before it runs (resource readers and reloads use it).
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self.callback()


def _register_trainers() -> None:
    try:
        from verl_agrae.integration.trainers import register_trainers

        register_trainers()
    except Exception:  # the estimator must stay usable even if verl's trainer internals moved
        logger.exception("verl-agrae: could not register the agrae_* trainer modes")


def activate() -> None:
    """Everything the entry point does (idempotent): register, activate the CPU platform if selected, hook."""
    from verl_agrae.integration import backends
    from verl_agrae.integration.estimator import register_estimator

    register_estimator()
    # Each backend in its own try: a failure there must not take the estimator down with it.
    for name, register in backends.REGISTRATIONS.items():
        try:
            register()
        except Exception:
            logger.exception("verl-agrae: could not register %s", name)
    if _V1_PACKAGE in sys.modules:
        _register_trainers()
    elif not any(isinstance(f, _AfterImport) and f.name == _V1_PACKAGE for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_V1_PACKAGE, _register_trainers))


activate()
