"""Run code around the first import of a named module (how patches reach modules that bind names at import).

Some verl behaviour is decided while a module executes (``verl.third_party.vllm`` reads the installed vLLM
version at import time), and some patches should only cost something in the processes that import their target
(verl's trainer stack, its weight-transfer module). :func:`on_import` covers both: ``around`` wraps the module's
execution, ``after`` runs once it has executed; if the module is already imported, ``after`` runs at once.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

__all__ = ["on_import"]


class _ImportHook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """One-shot finder for module ``name``: its real loader executes it inside ``around()``, then ``after()``."""

    def __init__(
        self, name: str, around: Callable[[], AbstractContextManager] | None, after: Callable[[], None] | None
    ) -> None:
        self.name, self.around, self.after, self._loader = name, around, after, None

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
        with self.around() if self.around is not None else contextlib.nullcontext():
            self._loader.exec_module(module)
        if self.after is not None:
            self.after()


def on_import(
    name: str,
    *,
    around: Callable[[], AbstractContextManager] | None = None,
    after: Callable[[], None] | None = None,
) -> None:
    """Arrange for ``around``/``after`` at the first import of module ``name`` in this process (idempotent per name).

    Args:
        name: full module name.
        around: context-manager factory entered while the module executes (skipped if it is already imported).
        after: called once the module has executed (at once if it is already imported).
    """
    if name in sys.modules:
        if after is not None:
            after()
        return
    if any(isinstance(f, _ImportHook) and f.name == name for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ImportHook(name, around, after))
