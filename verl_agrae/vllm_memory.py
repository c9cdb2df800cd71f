"""How much memory a vLLM engine on the CPU gives its KV cache when nobody said (training and evaluation alike).

On the CPU vLLM reads ``gpu_memory_utilization`` as a share of all RAM and refuses to start when that much is not
free, so every CPU engine we start gets an explicit byte budget: a share of the memory available when it starts,
within bounds. Training (``trainer/cpu_overrides.py``) and evaluation (``eval/vllm_backend.py``) choose their own
share and bounds (training also holds the actor and its optimizer in RAM); the rule is this one function.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

GiB = 1 << 30


def available_memory_bytes() -> int:
    """Bytes available to a vLLM CPU engine.

    vLLM's own figure for the memory node of the first CPU this process may use (what its CPU worker checks
    against, cgroup limits included) when vLLM is installed, else psutil's system-wide figure.
    """
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        cpus = get_allowed_cpu_list()
        node = cpus[0].numa_node if cpus and cpus[0].numa_node >= 0 else 0
        return int(get_memory_node_info(node).available_memory)
    except Exception as exc:  # noqa: BLE001 - no vLLM, or another layout: the system-wide figure is close enough
        logger.debug("vLLM memory node info unavailable (%s); using psutil", exc)
        import psutil

        return int(psutil.virtual_memory().available)


def cpu_kv_cache_bytes(share: float, bounds_gib: tuple[float, float], available_bytes: int | None = None) -> int:
    """``share`` of the available memory, clamped to ``bounds_gib``.

    Args:
        share: fraction of the available memory, in (0, 1].
        bounds_gib: (lowest, highest) budget in GiB.
        available_bytes: the available memory (None: :func:`available_memory_bytes`).

    Returns:
        The KV cache budget in bytes.
    """
    avail = available_memory_bytes() if available_bytes is None else int(available_bytes)
    lo, hi = bounds_gib
    return int(min(max(avail * share, lo * GiB), hi * GiB))
