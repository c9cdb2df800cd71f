"""CPU platform for verl 0.9.1: the platform class and its ``torch.cuda``-shaped device module.

Classes only; registration, selection (``VERL_PLATFORM=cpu``) and the patches a CPU run needs live in
:mod:`verl_agrae.integration` (``backends.py``, ``patches.py``).
"""

# verl first, before any module of this package: `import verl` runs our entry point, which registers this package's
# classes by importing them. Were verl first imported from inside one of those modules, it would meet that module
# half-initialised and the registration would fail.
import verl  # noqa: E402, F401
