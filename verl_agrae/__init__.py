"""verl-agrae: A-GRAE for verl.

Importing this package has no side effects on verl. Everything that registers with, subclasses or patches verl
lives in :mod:`verl_agrae.integration`, reached through one route: the ``verl.plugins`` entry point
(:mod:`verl_agrae.integration.entry`), which verl runs on ``import verl``. See docs/architecture.md.
"""

__version__ = "0.1.0"
