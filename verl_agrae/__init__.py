"""verl-agrae: A-GRAE for verl.

Importing this package has no side effects on verl; `verl_agrae.register` (loaded by verl through the
``verl.plugins`` entry point) is the only module that touches verl's estimator registry.
"""

__version__ = "0.1.0"
