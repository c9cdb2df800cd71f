"""A ``torch.cuda``-shaped namespace for the CPU, returned by our platform's ``device_module``.

verl reaches the accelerator through ``get_torch_device()`` (``verl/utils/device.py``) and calls
``torch.cuda``-style functions on it: ``empty_cache``, ``mem_get_info``, ``max_memory_allocated``,
``get_rng_state``, ``set_device``, ... ``torch.cpu`` has only part of that API, so this module
completes it. Memory figures are the process's resident set size (the honest CPU analogue of
"allocated"), peaks come from the kernel's high-water mark.
"""

from __future__ import annotations

import resource
from typing import Any

import psutil
import torch

# Streams and events exist on torch.cpu (no-op implementations); re-export them so verl's stream
# code paths work unchanged.
Stream = torch.cpu.Stream
Event = torch.cpu.Event
stream = torch.cpu.stream
current_stream = torch.cpu.current_stream
synchronize = torch.cpu.synchronize
device_count = torch.cpu.device_count

# Peak RSS seen at the last reset; ``ru_maxrss`` cannot be reset, so "peak since reset" is the max of
# the current RSS samples taken by callers, starting from the RSS at reset time.
_peak_since_reset: int | None = None


def is_available() -> bool:
    """The CPU is always there."""
    return True


def current_device() -> str:
    """The device to use for ``tensor.to(...)``: verl passes this value straight to torch."""
    return "cpu"


def set_device(device: Any) -> None:
    """No-op: there is one CPU device."""


def empty_cache() -> None:
    """No-op: the CPU allocator has no cache to release."""


def ipc_collect() -> None:
    """No-op: there are no CUDA IPC handles on CPU."""


def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
    """No-op: CPU memory is not partitioned per process."""


def get_device_name(device: Any = None) -> str:
    """Processor name as the OS reports it."""
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _rss() -> int:
    return psutil.Process().memory_info().rss


def memory_allocated(device: Any = None) -> int:
    """Bytes resident in RAM for this process."""
    return _rss()


memory_reserved = memory_allocated


def max_memory_allocated(device: Any = None) -> int:
    """Peak resident bytes (since :func:`reset_peak_memory_stats`, else since process start)."""
    global _peak_since_reset
    if _peak_since_reset is None:
        # ru_maxrss is in KiB on Linux.
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, _rss())
    _peak_since_reset = max(_peak_since_reset, _rss())
    return _peak_since_reset


max_memory_reserved = max_memory_allocated


def reset_peak_memory_stats(device: Any = None) -> None:
    """Start a new peak window at the current RSS."""
    global _peak_since_reset
    _peak_since_reset = _rss()


def reset_accumulated_memory_stats(device: Any = None) -> None:
    """No-op: nothing is accumulated."""


def mem_get_info(device: Any = None) -> tuple[int, int]:
    """``(free, total)`` bytes of system RAM, as ``torch.cuda.mem_get_info`` reports device memory."""
    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


class _Properties:
    """The subset of ``torch.cuda.get_device_properties`` verl reads."""

    def __init__(self) -> None:
        self.name = get_device_name()
        self.total_memory = int(psutil.virtual_memory().total)
        self.major, self.minor = 0, 0


def get_device_properties(device: Any = None) -> _Properties:
    """System RAM as ``total_memory``."""
    return _Properties()


def get_rng_state(device: Any = None) -> torch.Tensor:
    """The CPU generator state (``torch.get_rng_state``)."""
    return torch.get_rng_state()


def set_rng_state(new_state: torch.Tensor, device: Any = None) -> None:
    """Restore the CPU generator state."""
    torch.set_rng_state(new_state)


def manual_seed(seed: int) -> None:
    """Seed the CPU generator."""
    torch.manual_seed(seed)


manual_seed_all = manual_seed
