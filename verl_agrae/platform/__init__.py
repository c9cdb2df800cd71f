"""CPU platform for verl 0.9.1: registration, selection and the patches a CPU run needs.

:func:`install` is what runs in every process that imports verl (our ``verl.plugins`` entry point calls
it): it registers the ``cpu`` platform with verl's ``PlatformRegistry`` and, only when the CPU is
selected (``VERL_PLATFORM=cpu``, which our entry point exports to every Ray worker), activates it:
the FSDP engine lookup is pointed at verl's CUDA-registered FSDP engine (``VERL_ENGINE_DEVICE``, an
override verl supports) and the patches in :mod:`verl_agrae.platform.patches` are applied.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["CPU_PLATFORM_ENV", "activate_cpu_platform", "cpu_selected", "install"]

#: The environment that selects our platform in every process (verl's own override variable).
CPU_PLATFORM_ENV = {"VERL_PLATFORM": "cpu"}


def cpu_selected() -> bool:
    """Whether this process was asked to run verl on the CPU (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def activate_cpu_platform() -> frozenset[str]:
    """Make this process ready for verl on the CPU (idempotent).

    Returns:
        Names of the patches applied.
    """
    from verl_agrae.platform.cpu_platform import register_cpu_platform
    from verl_agrae.platform.patches import apply_cpu_patches

    register_cpu_platform()
    # verl registers its FSDP engine for cuda/npu only; this variable is verl's own override of the
    # device used for that lookup (verl/workers/engine/base.py, EngineRegistry.get_engine_cls).
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")
    return apply_cpu_patches()


def install() -> None:
    """Register the ``cpu`` platform; activate it when ``VERL_PLATFORM=cpu``. Safe to call repeatedly."""
    from verl_agrae.platform.cpu_platform import register_cpu_platform

    register_cpu_platform()
    # Not CPU specific: verl's model build breaks whenever a trl without the value-head class is installed.
    from verl_agrae.platform.patches import trl_without_value_head_breaks_model_build

    trl_without_value_head_breaks_model_build()
    if cpu_selected():
        applied = activate_cpu_platform()
        logger.debug("verl CPU platform active, patches: %s", sorted(applied))
