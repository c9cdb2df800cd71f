"""The ``hf`` rollout replica: what verl's ``LLMServerManager`` instantiates for ``rollout.name=hf``.

A replica is one :class:`~verl_agrae.rollout.server.HFRolloutServer` Ray actor, placed on the node of the
replica's first worker (the fused actor/rollout worker in the default hybrid layout, a
``CheckpointEngineWorker`` in the standalone layout). The server requests no accelerator of its own: like
verl's vLLM server it is given its worker's device ids, so on a GPU node it shares the worker's GPU, and on
a CPU node it simply runs on CPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray
from verl.workers.rollout.replica import RolloutReplica

from verl_agrae.rollout.adapter import server_actor_name

__all__ = ["HFReplica"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))


def _worker_placement(resource_name: str) -> tuple[str, list[str]]:
    """Run inside a worker: its node id and the accelerator ids Ray gave it (may be empty)."""
    ctx = ray.get_runtime_context()
    ids = ctx.get_accelerator_ids().get(resource_name, [])
    return ctx.get_node_id(), [str(i) for i in ids]


class HFReplica(RolloutReplica):
    """Rollout replica backed by one Hugging Face ``generate`` server (see module docstring)."""

    def _server_kind(self) -> str:
        if self.is_reward_model:
            return "reward"
        if self.is_teacher_model:
            return "teacher"
        return ""

    async def launch_servers(self) -> None:
        """Start the server actor next to the replica's workers and record its handle and address."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        from verl.plugin.platform import get_platform

        from verl_agrae.rollout.server import HFRolloutServer

        if not self.workers:
            raise RuntimeError(f"hf rollout replica {self.replica_rank} has no workers to colocate its server with")
        platform = get_platform()
        resource_name = platform.ray_resource_name()
        placements = await asyncio.gather(
            *[w.__ray_call__.remote(lambda _self, rn=resource_name: _worker_placement(rn)) for w in self.workers]
        )
        node_id = placements[0][0]
        device_ids = [i for _, ids in placements for i in ids]
        visible = ",".join(dict.fromkeys(device_ids)) or None

        env_vars = {var: "1" for var in platform.ray_noset_envvars()}
        env_vars.update(platform.rollout_env_vars())
        name = server_actor_name(self.replica_rank, 0, self._server_kind(), self.name_suffix)
        server_cls = ray.remote(HFRolloutServer)
        server = server_cls.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            runtime_env={"env_vars": env_vars},
            name=name,
            max_concurrency=self.max_concurrency,
        ).remote(
            config=self.config,
            model_config=self.model_config,
            rollout_mode=self.rollout_mode,
            replica_rank=self.replica_rank,
            node_rank=0,
            visible_devices=visible,
            visible_devices_envvar=platform.visible_devices_envvar() if visible else None,
        )
        await server.launch_server.remote()
        address, port = await server.get_server_address.remote()
        self.servers = [server]
        self._server_handle = server
        host = f"[{address}]" if ":" in address else address
        self._server_address = f"{host}:{port}" if port is not None else f"{host}:{name}"
        logger.info("hf rollout replica %d: server %s at %s", self.replica_rank, name, self._server_address)

    async def get_stats(self) -> dict[str, Any]:
        """Batching counters of the replica's server."""
        return await self._server_handle.get_stats.remote()
