"""verl platform for machines without an accelerator (``VERL_PLATFORM=cpu``).

verl 0.9.1 resolves its device layer through ``verl.plugin.platform.get_platform()``; without a CPU
entry its auto-detection falls back to ``nvidia`` and every worker asks for NCCL. This class answers
verl's questions for the CPU:

- the collective backend is ``gloo`` (verl's worker process groups get ``cpu:gloo`` through the
  patch ``process_group_backend_names_cpu_twice``: verl would otherwise build ``cpu:gloo,cpu:gloo``);
- the device module is :mod:`verl_agrae.platform.device_module`, a ``torch.cuda``-shaped namespace;
- the current device is the string ``"cpu"`` because verl passes ``get_device_id()`` straight to
  ``tensor.to(...)`` and ``torch.device(...)`` (an index 0 would mean ``cuda:0``);
- Ray placement still asks for ``GPU`` bundles (verl's resource pools hard-code ``use_gpu=True``),
  which the entry point satisfies by declaring logical GPUs to Ray.

Auto-detection never picks this platform: CPU is used only when asked for, so a GPU box with a
broken driver fails as before instead of silently training on the CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform import PlatformBase

from verl_agrae.platform import device_module

PLATFORM_NAME = "cpu"


class PlatformCPU(PlatformBase):
    """CPU backend: gloo collectives, RAM as device memory, logical Ray GPUs as placement slots."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected; selected with VERL_PLATFORM=cpu only (see module docstring).
        return False

    def current_device(self) -> str:  # type: ignore[override]  (verl uses the value as a torch device)
        return device_module.current_device()

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        device_module.set_device(device_index)

    def synchronize(self, device_index: int | None = None) -> None:
        device_module.synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        """No-op: ``expandable_segments`` and friends are CUDA caching-allocator settings."""

    def empty_cache(self) -> None:
        device_module.empty_cache()

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        # verl prefixes this with the device ("cpu:" + name) where it builds backend strings itself.
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray exports the logical GPU ids it assigned through CUDA_VISIBLE_DEVICES; verl reads the same
        # variable to compute local ranks, which is all it means here.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        """No-op: no device profiler."""

    def profiler_stop(self) -> None:
        """No-op: no device profiler."""

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
