"""What verl loads in every process through our ``verl.plugins`` entry point (see setup.py).

Keep this import cheap: it runs inside ``import verl`` in the driver, the TaskRunner and every worker.

- The ``agrae`` advantage estimator is registered at once (cheap: pure torch).
- The ``cpu`` platform (:mod:`verl_agrae.platform`; active only with ``VERL_PLATFORM=cpu``) and the ``hf`` rollout
  backend (:mod:`verl_agrae.rollout`) are registered at once: verl resolves both by name in its workers.
- Our trainer modes (``agrae_sync``, ``agrae_separate_async``, :mod:`verl_agrae.agrae_trainer`) import verl's
  whole V1 trainer stack, which only the TaskRunner needs. They are registered by a one-shot import hook the
  moment a process imports ``verl.trainer.ppo.v1`` (where ``get_trainer_cls`` lives), so
  ``trainer.v1.trainer_mode=agrae_sync`` works from verl's own ``main_ppo`` too, and workers never pay for it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys

from verl_agrae.register import register

logger = logging.getLogger(__name__)

_V1_PACKAGE = "verl.trainer.ppo.v1"
_TRAINERS_MODULE = "verl_agrae.agrae_trainer"


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``callback`` right after module ``name`` has been executed, the first time it is imported."""

    def __init__(self, name: str, callback) -> None:
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
        importlib.import_module(_TRAINERS_MODULE)
    except Exception:  # the estimator must stay usable even if verl's trainer internals moved
        logger.exception("verl-agrae: could not register the agrae_* trainer modes")


def _register_backends() -> None:
    # Each in its own try: a failure here must not take the estimator down with it; it is logged, and
    # `verl-agrae doctor` / the training entry point check what they need explicitly.
    try:
        from verl_agrae.platform import install

        install()  # registers the `cpu` platform; activates it only when VERL_PLATFORM=cpu
    except Exception:
        logger.exception("verl-agrae: could not install the CPU platform plugin")
    try:
        from verl_agrae.rollout import register as register_hf_rollout

        register_hf_rollout()  # the `hf` rollout backend (no model loading)
    except Exception:
        logger.exception("verl-agrae: could not register the `hf` rollout backend")


register()
_register_backends()
if _V1_PACKAGE in sys.modules:
    _register_trainers()
elif not any(isinstance(f, _AfterImport) and f.name == _V1_PACKAGE for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterImport(_V1_PACKAGE, _register_trainers))
