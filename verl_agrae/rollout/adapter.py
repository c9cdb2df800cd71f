"""The ``hf`` rollout adapter: how verl's actor workers reach the ``hf`` server (``_ROLLOUT_REGISTRY["hf", ...]``).

verl builds one adapter per trainer rank (hybrid layout: inside the fused actor/rollout worker; standalone:
inside a ``CheckpointEngineWorker``). After each training step verl calls, on every rank,
``resume(["weights"])``, ``update_weights(actor.get_per_tensor_param(), ...)``, ``resume(["kv_cache"])``.

Wire format: verl's FSDP/FSDP2 engines hand over ``named_tensors`` — a generator of ``(hf_name, full tensor)``
whose full tensors are gathered collectively (``DTensor.full_tensor``), so every rank must drain it. Only the
replica's leader rank (rollout rank 0) ships tensors to the server, in CPU buckets of
``checkpoint_engine.update_weights_bucket_megabytes`` through Ray's object store; the server copies them into
its model in place. ``delta_flush`` (verl's bf16 delta engine) and unmerged LoRA adapters are rejected with a
clear error.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.utils import ensure_async_iterator

__all__ = ["HFServerAdapter", "server_actor_name"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))


def server_actor_name(replica_rank: int, node_rank: int = 0, kind: str = "", name_suffix: str = "") -> str:
    """Ray actor name of a replica's server (``kind``: "", "reward" or "teacher")."""
    kind_part = f"{kind}_" if kind else ""
    return f"hf_server_{kind_part}{replica_rank}_{node_rank}{name_suffix}"


class HFServerAdapter(BaseRollout):
    """Client side of the ``hf`` server inside a trainer rank.

    Args:
        config: verl ``RolloutConfig``.
        model_config: verl ``HFModelConfig``.
        device_mesh: the rollout device mesh in hybrid mode (unused: one server per replica), None standalone.
        replica_rank: replica this rank belongs to; -1 derives it from the ``RANK`` environment variable.
    """

    def __init__(self, config: Any, model_config: Any, device_mesh: Any = None, replica_rank: int = -1, **kwargs: Any):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else int(replica_rank)
        self.rollout_rank = rank % rollout_world_size
        self.is_leader_rank = self.rollout_rank == 0
        self.server_handle = None
        self.last_update: dict[str, Any] = {}

    def _server(self):
        if self.server_handle is None:
            import ray

            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]) -> None:
        """Bring the server's model back to its device (after ``sleep``); kv_cache is a no-op for hf."""
        if self.is_leader_rank and self.config.free_cache_engine:
            await self._server().wake_up.remote(tags=list(tags))

    async def release(self) -> None:
        """Offload the server's model from the accelerator (no-op on CPU)."""
        if self.is_leader_rank and self.config.free_cache_engine:
            await self._server().sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Any,
        wire_format: str = "named_tensors",
        global_steps: int | None = None,
        peft_config: dict | None = None,
        **kwargs: Any,
    ) -> None:
        """Send the actor's full weights to the server.

        Args:
            weights: (async) iterable of ``(hf_name, tensor)``; drained on every rank.
            wire_format: must be ``"named_tensors"``.
            global_steps: trainer step these weights come from (reported back in ``TokenOutput``).
            peft_config: set when verl sends LoRA adapter weights only; not supported (use
                ``actor_rollout_ref.model.lora.merge=True``).
            **kwargs: other verl arguments (``base_sync_done``, ...), unused.
        """
        if wire_format != "named_tensors":
            raise NotImplementedError(
                f"the hf rollout consumes full named tensors only, got wire_format={wire_format!r}; "
                "use actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
            )
        if peft_config is not None:
            raise NotImplementedError(
                "the hf rollout cannot load LoRA adapters separately; set actor_rollout_ref.model.lora.merge=True"
            )
        start = time.perf_counter()
        bucket_bytes = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20
        bucket: list[tuple[str, torch.Tensor]] = []
        size = sent = 0
        server = self._server() if self.is_leader_rank else None
        async for name, tensor in ensure_async_iterator(weights):
            # Every rank iterates: producing a full tensor is a collective across the actor's ranks.
            if server is None:
                continue
            cpu = tensor.detach()
            if hasattr(cpu, "full_tensor"):  # a DTensor that the engine did not gather
                cpu = cpu.full_tensor()
            cpu = cpu.to("cpu")
            if size and size + cpu.nbytes > bucket_bytes:
                sent += await server.load_weights.remote(bucket)
                bucket, size = [], 0
            bucket.append((name, cpu))
            size += cpu.nbytes
        if server is None:
            return
        if bucket:
            sent += await server.load_weights.remote(bucket)
        self.last_update = await server.finish_weight_update.remote(global_steps)
        logger.info(
            "hf rollout: sent %d tensors to replica %d in %.2fs", sent, self.replica_rank, time.perf_counter() - start
        )

    def generate_sequences(self, prompts: Any) -> Any:
        raise NotImplementedError(
            "the hf rollout serves verl's async agent loop through its server; it has no synchronous "
            "generate_sequences()"
        )
