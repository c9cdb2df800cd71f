"""Checkpoint engines for verl (actor-to-rollout weight transfer); :mod:`.gloo` works on any device."""

# verl first, before any module of this package: `import verl` runs our entry point, which registers this package's
# classes by importing them. Were verl first imported from inside one of those modules, it would meet that module
# half-initialised and the registration would fail.
import verl  # noqa: E402, F401
