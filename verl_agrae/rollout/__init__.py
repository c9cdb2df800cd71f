"""Hugging Face rollout backend ``hf`` for verl 0.9.1 (CPU or a single GPU, no vLLM needed).

Importing this package registers the backend with verl (idempotent, no model loading):

- ``RolloutReplicaRegistry`` ``"hf"`` -> :class:`~verl_agrae.rollout.replica.HFReplica` (server actors);
- ``_ROLLOUT_REGISTRY[("hf", "async")]`` -> :class:`~verl_agrae.rollout.adapter.HFServerAdapter` (weight sync).

Select it with ``actor_rollout_ref.rollout.name=hf``; tune batching under
``actor_rollout_ref.rollout.engine_kwargs.hf`` (see :mod:`verl_agrae.rollout.settings` and docs/rollout.md).
"""

from __future__ import annotations

__all__ = ["BACKEND_NAME", "ADAPTER_PATH", "is_registered", "register"]

BACKEND_NAME = "hf"
ADAPTER_PATH = "verl_agrae.rollout.adapter.HFServerAdapter"


def _load_replica():
    from verl_agrae.rollout.replica import HFReplica

    return HFReplica


def register() -> None:
    """Register ``hf`` in verl's replica and rollout-adapter registries (safe to call repeatedly).

    Raises:
        ValueError: when another package already registered a different backend under ``hf``.
    """
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    current = _ROLLOUT_REGISTRY.get((BACKEND_NAME, "async"))
    if current is not None and current != ADAPTER_PATH:
        raise ValueError(f"verl already has a rollout adapter named {BACKEND_NAME!r}: {current!r}")
    loader = RolloutReplicaRegistry._registry.get(BACKEND_NAME)
    if loader is not None and getattr(loader, "__module__", None) != __name__:
        raise ValueError(f"verl already has a rollout replica named {BACKEND_NAME!r}: {loader!r}")
    _ROLLOUT_REGISTRY[(BACKEND_NAME, "async")] = ADAPTER_PATH
    RolloutReplicaRegistry.register(BACKEND_NAME, _load_replica)


def is_registered() -> bool:
    """True when verl's registries in this process resolve ``hf`` to this package."""
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    loader = RolloutReplicaRegistry._registry.get(BACKEND_NAME)
    return (
        _ROLLOUT_REGISTRY.get((BACKEND_NAME, "async")) == ADAPTER_PATH
        and loader is not None
        and getattr(loader, "__module__", None) == __name__
    )


register()
