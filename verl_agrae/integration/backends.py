"""Registration of our backends with verl's registries, and activation of the CPU platform.

The backends themselves (:mod:`verl_agrae.platform`, :mod:`verl_agrae.rollout`,
:mod:`verl_agrae.checkpoint_engine`) only define classes; they never register on import. This module is the
one place that puts them into verl, by name, in every process (called from :mod:`.entry`):

- ``PlatformRegistry["cpu"]`` -> :class:`~verl_agrae.platform.cpu_platform.PlatformCPU`; selected only with
  ``VERL_PLATFORM=cpu`` (verl's own variable), which also applies the CPU patches (:mod:`.patches`);
- ``RolloutReplicaRegistry["hf"]`` -> :class:`~verl_agrae.rollout.replica.HFReplica` and
  ``_ROLLOUT_REGISTRY[("hf", "async")]`` -> :class:`~verl_agrae.rollout.adapter.HFServerAdapter`;
- ``CheckpointEngineRegistry["gloo"]`` -> :class:`~verl_agrae.checkpoint_engine.gloo.GlooCheckpointEngine`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = [
    "CPU_PLATFORM_ENV",
    "HF_ADAPTER_PATH",
    "HF_BACKEND",
    "REGISTRATIONS",
    "activate_cpu_platform",
    "cpu_selected",
    "hf_rollout_registered",
    "register_cpu_platform",
    "register_gloo_checkpoint_engine",
    "register_hf_rollout",
]

#: The environment that selects our platform in every process (verl's own override variable).
CPU_PLATFORM_ENV = {"VERL_PLATFORM": "cpu"}
HF_BACKEND = "hf"
HF_ADAPTER_PATH = "verl_agrae.rollout.adapter.HFServerAdapter"


def cpu_selected() -> bool:
    """Whether this process was asked to run verl on the CPU (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def _register_platform_class() -> None:
    from verl.plugin.platform import PlatformRegistry

    from verl_agrae.platform.cpu_platform import PLATFORM_NAME, PlatformCPU

    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)


def activate_cpu_platform() -> frozenset[str]:
    """Make this process ready for verl on the CPU (idempotent).

    Returns:
        Names of the patches applied.
    """
    from verl_agrae.integration.patches import apply_cpu_patches

    _register_platform_class()
    # verl registers its FSDP engine for cuda/npu only; this variable is verl's own override of the
    # device used for that lookup (verl/workers/engine/base.py, EngineRegistry.get_engine_cls).
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")
    return apply_cpu_patches()


def register_cpu_platform() -> None:
    """Register the ``cpu`` platform; activate it when ``VERL_PLATFORM=cpu``. Safe to call repeatedly."""
    from verl_agrae.integration.patches import trl_without_value_head_breaks_model_build

    _register_platform_class()
    # Not CPU specific: verl's model build breaks whenever a trl without the value-head class is installed.
    trl_without_value_head_breaks_model_build()
    if cpu_selected():
        applied = activate_cpu_platform()
        logger.debug("verl CPU platform active, patches: %s", sorted(applied))


def _load_hf_replica():
    from verl_agrae.rollout.replica import HFReplica

    return HFReplica


def register_hf_rollout() -> None:
    """Register ``hf`` in verl's replica and rollout-adapter registries (idempotent, no model loading).

    Raises:
        ValueError: when another package already registered a different backend under ``hf``.
    """
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    current = _ROLLOUT_REGISTRY.get((HF_BACKEND, "async"))
    if current is not None and current != HF_ADAPTER_PATH:
        raise ValueError(f"verl already has a rollout adapter named {HF_BACKEND!r}: {current!r}")
    loader = RolloutReplicaRegistry._registry.get(HF_BACKEND)
    if loader is not None and getattr(loader, "__module__", None) != __name__:
        raise ValueError(f"verl already has a rollout replica named {HF_BACKEND!r}: {loader!r}")
    _ROLLOUT_REGISTRY[(HF_BACKEND, "async")] = HF_ADAPTER_PATH
    RolloutReplicaRegistry.register(HF_BACKEND, _load_hf_replica)


def hf_rollout_registered() -> bool:
    """True when verl's registries in this process resolve ``hf`` to our backend."""
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    loader = RolloutReplicaRegistry._registry.get(HF_BACKEND)
    return (
        _ROLLOUT_REGISTRY.get((HF_BACKEND, "async")) == HF_ADAPTER_PATH
        and loader is not None
        and getattr(loader, "__module__", None) == __name__
    )


def register_gloo_checkpoint_engine() -> None:
    """Register the ``gloo`` checkpoint engine (actor-to-rollout weights over gloo; any device) (idempotent).

    Raises:
        ValueError: when another package already registered a different engine under the name.
    """
    from verl.checkpoint_engine.base import CheckpointEngineRegistry

    from verl_agrae.checkpoint_engine.gloo import BACKEND_NAME, GlooCheckpointEngine

    current = CheckpointEngineRegistry._registry.get(BACKEND_NAME)
    if current is not None and current.__qualname__ != GlooCheckpointEngine.__qualname__:
        raise ValueError(f"verl already has a checkpoint engine named {BACKEND_NAME!r}: {current!r}")
    CheckpointEngineRegistry.register(BACKEND_NAME)(GlooCheckpointEngine)


#: What the entry point registers, each guarded on its own (name -> function).
REGISTRATIONS: dict[str, Callable[[], None]] = {
    "the CPU platform": register_cpu_platform,
    "the `hf` rollout backend": register_hf_rollout,
    "the `gloo` checkpoint engine": register_gloo_checkpoint_engine,
}
