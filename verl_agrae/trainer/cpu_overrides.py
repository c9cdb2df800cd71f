"""Everything a CPU run of verl needs in its config and environment, applied when the config asks for CPU.

The user asks for the CPU with ``trainer.device=cpu`` (the packaged ``cpu_*`` configs do) or by exporting
``VERL_PLATFORM=cpu``. Then, following the table in ``docs/cpu.md`` (row numbers below):

- *required* settings (verl cannot run on the CPU otherwise) are forced; a command-line override that
  contradicts one is refused with the reason;
- *defaults* (sizes and counts that suit a small machine) are applied only where the user did not set
  the key on the command line;
- the environment that selects our platform is exported to this process and to every Ray worker.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import psutil
from omegaconf import DictConfig, OmegaConf, open_dict

from verl_agrae.integration.backends import CPU_PLATFORM_ENV
from verl_agrae.integration.vllm_plugin import LIVE_WEIGHTS_ENV
from verl_agrae.vllm_memory import cpu_kv_cache_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "add_worker_env",
    "REQUIRED_CPU_SETTINGS",
    "REQUIRED_VLLM_CPU_SETTINGS",
    "CpuSettingConflict",
    "apply_cpu_settings",
    "cpu_requested",
    "cpu_worker_env",
    "overridden_keys",
]

# Settings without which verl 0.9.1 does not run on the CPU: (key, value, why).
REQUIRED_CPU_SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("actor_rollout_ref.actor.strategy", "fsdp2", "FSDP1 hard-codes sync_module_states=True (row 9)"),
    ("actor_rollout_ref.ref.strategy", "fsdp2", "FSDP1 hard-codes sync_module_states=True (row 9)"),
    ("critic.strategy", "fsdp2", "FSDP1 hard-codes sync_module_states=True (row 9)"),
    ("actor_rollout_ref.model.use_remove_padding", False, "remove-padding needs flash-attention kernels (row 7)"),
    ("critic.model.use_remove_padding", False, "remove-padding needs flash-attention kernels (row 7)"),
    (
        "actor_rollout_ref.model.override_config.attn_implementation",
        "sdpa",
        "FlashAttention 2 does not exist on the CPU (row 7)",
    ),
    ("critic.model.override_config.attn_implementation", "sdpa", "FlashAttention 2 does not exist on the CPU (row 7)"),
)

# Rollout backends that cannot run without a GPU; replaced by our `hf` backend unless set explicitly.
_GPU_ONLY_ROLLOUTS = {"sglang", "trtllm"}
# vLLM runs on the CPU through its CPU build (README, "vLLM on CPU"), but only when asked for by name: the packaged
# GPU configs say vllm, and a CPU run of them gets our `hf` backend unless the user sets rollout.name=vllm.
_VLLM = "vllm"
_REPLACED_BY_HF = {*_GPU_ONLY_ROLLOUTS, _VLLM, None, "???"}

# Settings without which verl's vLLM rollout does not run on the CPU: (key, value, why).
REQUIRED_VLLM_CPU_SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("actor_rollout_ref.rollout.enable_sleep_mode", False, "vLLM has no sleep mode on the CPU"),
    (
        "actor_rollout_ref.rollout.free_cache_engine",
        False,
        "freeing the cache puts the engine to sleep, which vLLM cannot do on the CPU",
    ),
)

#: KV cache of verl's vLLM rollout on the CPU unless set: this share of the memory available at start, within
#: these bounds (GiB). Smaller than evaluation's share (``eval/vllm_backend.py``): the actor and its optimizer
#: state share the RAM during training.
VLLM_KV_CACHE_SHARE = 0.2
VLLM_KV_CACHE_BOUNDS_GIB = (0.0, 4.0)

#: Logical CPUs declared to Ray: placement slots, not cores. Each pool bundle asks for several CPUs and
#: the V1 trainer's TransferQueue actors one each; declaring the real core count deadlocks (row 3).
DEFAULT_LOGICAL_CPUS = 16


def cpu_requested(config: DictConfig) -> bool:
    """Whether this run should use our CPU platform (``trainer.device=cpu`` or ``VERL_PLATFORM=cpu``)."""
    device = str(OmegaConf.select(config, "trainer.device", default="") or "").strip().lower()
    return device == "cpu" or os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def overridden_keys(overrides: Iterable[str]) -> set[str]:
    """Config keys set on the command line (``a.b=1``, ``+a.b=1``, ``++a.b=1``; deletions ``~a.b`` too)."""
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~").strip()
        if key:
            keys.add(key)
    return keys


def _user_set(key: str, user_keys: set[str]) -> bool:
    # Setting a parent node (e.g. `trainer=...`) counts as setting all of its children.
    return any(key == k or key.startswith(k + ".") for k in user_keys)


def _set(config: DictConfig, key: str, value: Any) -> None:
    with open_dict(config):
        OmegaConf.update(config, key, value, merge=True, force_add=True)


def _divisor_at_most(n: int, limit: int) -> int:
    for d in range(max(1, min(limit, n)), 0, -1):
        if n % d == 0:
            return d
    return 1


def cpu_worker_env() -> dict[str, str]:
    """Environment every verl process needs on the CPU (exported here and through Ray's runtime_env).

    Our platform itself reaches every process through the ``verl.plugins`` entry point
    (:mod:`verl_agrae.integration.entry`); ``VERL_PLATFORM=cpu`` tells it to activate.
    """
    cores = os.cpu_count() or 1
    return {
        **CPU_PLATFORM_ENV,
        # verl's FSDP engine is registered for cuda/npu; verl's own override of the lookup device (row 6).
        "VERL_ENGINE_DEVICE": "cuda",
        # Ray sets OMP_NUM_THREADS=1 in actors without whole CPUs; generation and training take turns on the
        # machine, so each may use every core.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(cores)),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false"),
        # TransferQueue asks torch for 8 threads when it packs tensors and warns on every call (hundreds of
        # lines per run) when the machine has fewer physical cores; ask for what is there.
        "TQ_NUM_THREADS": os.environ.get("TQ_NUM_THREADS", str(psutil.cpu_count(logical=False) or cores)),
        # Ray starts its workers at niceness 15; on a CPU machine they do all the work, so any other busy process
        # (a build, a second job) would take ~97% of the cores from them and a step would crawl. Ray's own job
        # manager runs job workers at 0 for the same reason. Read by the raylet this process starts.
        "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0"),
        # Read by our vLLM plugin in vLLM's processes: with rollout.name=vllm, verl updates the engine's weights
        # in place, which vLLM's packed CPU weights would not take (integration/vllm_plugin.py).
        LIVE_WEIGHTS_ENV: "1",
    }


class CpuSettingConflict(ValueError):
    """A command-line override contradicts a setting the CPU run requires."""


def apply_cpu_settings(
    config: DictConfig,
    user_overrides: Iterable[str] = (),
    *,
    logical_cpus: int | None = None,
    logical_gpus: int | None = None,
    joins_cluster: bool = False,
) -> dict[str, Any]:
    """Rewrite ``config`` in place for verl on the CPU.

    Args:
        config: the composed training config (struct mode is respected; new keys are added explicitly).
        user_overrides: the command-line overrides, to leave the user's explicit choices alone.
        logical_cpus: CPUs to declare to Ray (default :data:`DEFAULT_LOGICAL_CPUS`).
        logical_gpus: GPUs to declare to Ray (default ``trainer.nnodes * trainer.n_gpus_per_node``).
        joins_cluster: the driver joins a running Ray cluster, whose nodes declared their logical CPUs and GPUs
            (``ray start --num-cpus/--num-gpus``): nothing is declared here (Ray refuses it).

    Returns:
        ``{key: value}`` of everything that was set, for the run log.

    Raises:
        CpuSettingConflict: the user explicitly set a value the CPU cannot run with.
    """
    user = overridden_keys(user_overrides)
    changed: dict[str, Any] = {}

    for key, value, why in REQUIRED_CPU_SETTINGS:
        current = OmegaConf.select(config, key, default=None)
        if _user_set(key, user) and current != value:
            raise CpuSettingConflict(f"{key}={current!r} cannot run on the CPU: {why}. Use {key}={value!r}.")
        if current != value:
            _set(config, key, value)
            changed[key] = value

    def default(key: str, value: Any) -> None:
        if not _user_set(key, user) and OmegaConf.select(config, key, default=None) != value:
            _set(config, key, value)
            changed[key] = value

    # One FSDP rank unless asked: every rank holds a full fp32 model, optimizer and reference copy.
    default("trainer.n_gpus_per_node", 1)
    default("trainer.nnodes", 1)
    rollout_name = OmegaConf.select(config, "actor_rollout_ref.rollout.name", default=None)
    if rollout_name in _REPLACED_BY_HF and not _user_set("actor_rollout_ref.rollout.name", user):
        _set(config, "actor_rollout_ref.rollout.name", "hf")
        changed["actor_rollout_ref.rollout.name"] = "hf"
    elif rollout_name in _GPU_ONLY_ROLLOUTS:
        raise CpuSettingConflict(
            f"actor_rollout_ref.rollout.name={rollout_name!r} needs a GPU; use actor_rollout_ref.rollout.name=hf "
            "(or vllm with vLLM's CPU build installed)"
        )
    elif rollout_name == _VLLM:
        changed.update(_apply_vllm_cpu_settings(config, user))
    default("actor_rollout_ref.rollout.tensor_model_parallel_size", 1)
    if _bypass_is_exact(config):
        # Our `hf` rollout samples with the actor's own fp32 weights and reports log-probs computed the actor's way
        # (rollout/sampling.py): they match verl's recomputation to ~1e-5 (tests run with bypass_mode=false check
        # training/rollout_probs_diff_max < 1e-3). With one PPO epoch that recomputation (old log-probs) is then a
        # second forward pass over the batch for nothing: verl's bypass mode reuses the rollout's log-probs. The
        # entropy it also measured now comes from the update's forward pass (actor/entropy_loss).
        default("algorithm.rollout_correction.bypass_mode", True)
        if OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode", default=False):
            default("actor_rollout_ref.actor.calculate_entropy", True)
    # fp32 compute everywhere. verl's FSDP engine computes in `fsdp_config.mixed_precision.param_dtype`, bf16
    # when unset (transformer_impl.py, FSDPEngine._build_fsdp_module; `fsdp_config.dtype` is not read there).
    # CPUs without AVX512-BF16/AMX run bf16 matmuls in PyTorch's scalar fallback, which made the demo's actor
    # update ~40x slower than fp32; bf16 would also put the actor's log-probs ~5e-2 away from fp32 rollouts.
    for node in (
        "actor_rollout_ref.actor.fsdp_config",
        "actor_rollout_ref.ref.fsdp_config",
        "critic.model.fsdp_config",
    ):
        if OmegaConf.select(config, node, default=None) is None:
            continue
        for part in ("param_dtype", "reduce_dtype", "buffer_dtype"):
            default(f"{node}.mixed_precision.{part}", "fp32")
        if OmegaConf.select(config, f"{node}.dtype", default=None) is not None:
            default(f"{node}.dtype", "float32")
    default("actor_rollout_ref.rollout.dtype", "float32")
    # torch.compile of the log-prob helpers costs minutes of compilation on a CPU and gains little.
    default("actor_rollout_ref.actor.use_torch_compile", False)
    default("actor_rollout_ref.ref.use_torch_compile", False)
    default("actor_rollout_ref.model.use_fused_kernels", False)

    batch = int(OmegaConf.select(config, "data.train_batch_size", default=1) or 1)
    n = int(OmegaConf.select(config, "actor_rollout_ref.rollout.n", default=1) or 1)
    # The agent loop splits batch*n responses into equal chunks, one per worker (row 11).
    default("actor_rollout_ref.rollout.agent.num_workers", _divisor_at_most(batch * n, 1))
    default("reward.num_workers", 1)
    default("data.dataloader_num_workers", 0)
    default("transfer_queue.backend.SimpleStorage.num_data_storage_units", 2)

    gpus = logical_gpus or int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
    mode = str(OmegaConf.select(config, "trainer.v1.trainer_mode", default="") or "")
    if mode.endswith("separate_async"):
        # Rollout on its own pool: weights travel through a checkpoint engine, and every engine verl ships
        # needs GPUs or RDMA; ours sends them over a gloo group (verl_agrae/checkpoint_engine/gloo.py), registered
        # by our entry point in every process.
        default("actor_rollout_ref.rollout.checkpoint_engine.backend", "gloo")
        default("actor_rollout_ref.rollout.nnodes", 1)
        default("actor_rollout_ref.rollout.n_gpus_per_node", 1)
    if not logical_gpus:  # a standalone rollout pool and a reference pool need logical GPUs of their own
        for pool in ("ref_pool", *(["actor_rollout_ref.rollout"] if mode.endswith("separate_async") else [])):
            nnodes = int(OmegaConf.select(config, f"{pool}.nnodes", default=0) or 0)
            gpus += nnodes * int(OmegaConf.select(config, f"{pool}.n_gpus_per_node", default=0) or 0)
    if not joins_cluster:
        default("ray_kwargs.ray_init.num_cpus", logical_cpus or DEFAULT_LOGICAL_CPUS)
        default("ray_kwargs.ray_init.num_gpus", gpus)
    return changed


def _bypass_is_exact(config: DictConfig) -> bool:
    """Whether reusing the rollout's log-probs as old log-probs equals verl's separate recomputation.

    Only for our `hf` rollout (vLLM's kernels and dtypes differ from the actor's), verl's v1 trainer in a synchronous
    mode (the rollout then always holds the actor's current weights; an asynchronous rollout may lag, and the legacy
    trainer also swaps the loss function in bypass mode), one PPO epoch (with more, the saved pass is a smaller share
    of the step and its rollout-vs-actor gap metric is worth keeping) and rollouts that return their log-probs.
    """

    def get(key: str) -> Any:
        return OmegaConf.select(config, key, default=None)

    return (
        get("actor_rollout_ref.rollout.name") == "hf"
        and int(get("actor_rollout_ref.actor.ppo_epochs") or 1) == 1
        and bool(get("trainer.use_v1"))
        and not str(get("trainer.v1.trainer_mode") or "").endswith("async")
        and bool(get("actor_rollout_ref.rollout.calculate_log_probs"))
    )


def _apply_vllm_cpu_settings(config: DictConfig, user: set[str]) -> dict[str, Any]:
    """What verl's vLLM rollout needs on the CPU (the user asked for ``rollout.name=vllm`` explicitly)."""
    if importlib.util.find_spec("vllm") is None:
        raise CpuSettingConflict(
            "actor_rollout_ref.rollout.name='vllm' on the CPU needs vLLM's CPU build in this environment "
            "(README, 'vLLM on CPU'); or use actor_rollout_ref.rollout.name=hf"
        )
    changed: dict[str, Any] = {}
    for key, value, why in REQUIRED_VLLM_CPU_SETTINGS:
        current = OmegaConf.select(config, key, default=None)
        if _user_set(key, user) and current != value:
            raise CpuSettingConflict(f"{key}={current!r} cannot run on the CPU: {why}. Use {key}={value!r}.")
        if current != value:
            _set(config, key, value)
            changed[key] = value
    # On the CPU vLLM reads `gpu_memory_utilization` as a share of all RAM and refuses to start when that much is
    # not free; a byte budget from what is available now is what a shared machine can give.
    key = "actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes"
    if not _user_set(key, user) and OmegaConf.select(config, key, default=None) is None:
        budget = cpu_kv_cache_bytes(VLLM_KV_CACHE_SHARE, VLLM_KV_CACHE_BOUNDS_GIB)
        _set(config, key, budget)
        changed[key] = budget
    return changed


def add_worker_env(config: DictConfig, env: Mapping[str, str], *, replace: bool = False) -> None:
    """Pass ``env`` to every Ray worker (``ray_kwargs.ray_init.runtime_env.env_vars``).

    Args:
        config: the training config.
        env: variables to add.
        replace: overwrite values already there (else the user's values win).
    """
    node = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars", default=None)
    current = {k: str(v) for k, v in (OmegaConf.to_container(node) if node is not None else {}).items()}
    new = {k: str(v) for k, v in env.items()}
    merged = {**current, **new} if replace else {**new, **current}
    _set(config, "ray_kwargs.ray_init.runtime_env.env_vars", merged)
