"""The one seam between verl-agrae and verl: everything that registers with, subclasses or patches verl.

- :mod:`.entry` — the ``verl.plugins`` entry point (setup.py), the only code that runs on ``import verl`` and
  the project's one activation route; it calls the registrations below in every process.
- :mod:`.estimator` — the ``agrae`` estimator as verl calls it, its registration, the start-up check
  (``ensure_registered``) and the explicit per-step exchange with the trainer (``AgraeStep``).
- :mod:`.trainers` — the ``agrae_sync`` / ``agrae_separate_async`` trainer modes (verl trainer subclasses).
- :mod:`.backends` — registration of our CPU platform, ``hf`` rollout backend and ``gloo`` checkpoint engine.
- :mod:`.patches` — every patch of verl internals, each checking its target first.

Nothing outside this package writes into verl (``tests/test_integration_seam.py`` enforces it); the
backends (``platform/``, ``rollout/``, ``checkpoint_engine/``) only define classes.
"""
