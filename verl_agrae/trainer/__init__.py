"""Training entry point (``verl-agrae train``), packaged configs and run-directory tooling.

Importing this package is cheap: nothing here imports verl or torch until a function needs it.
"""
