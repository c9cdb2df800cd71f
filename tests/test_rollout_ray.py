"""The ``hf`` backend through Ray, as verl drives it: replica -> server actor, adapter -> weight sync."""

from __future__ import annotations

import asyncio

import pytest
import torch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster(ray_session):
    # conftest's 4 logical CPUs: the server actor and the stand-in worker each hold one while alive.
    return ray_session


@ray.remote(num_cpus=1)
class _StandInWorker:
    """Plays the fused actor/rollout worker the replica colocates its server with."""

    def ping(self) -> str:
        return "ok"


class _WorkerGroup:
    def __init__(self, workers):
        self.workers = workers
        self.world_size = len(workers)


def test_replica_serves_batches_and_receives_weights_through_ray(ray_cluster, lively_model_dir, monkeypatch):
    import verl  # noqa: F401  (our entry point registers hf)
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutMode, get_rollout_replica_class

    from verl_agrae.testing.rollout import rollout_configs

    monkeypatch.delenv("RANK", raising=False)  # the test process plays trainer rank 0 (the replica leader)
    config, model_config = rollout_configs(lively_model_dir, response_length=12, max_batch_size=16, max_wait_ms=200)
    replica_cls = get_rollout_replica_class("hf")
    replica = replica_cls(replica_rank=0, config=config, model_config=model_config, gpus_per_node=1)
    worker = _StandInWorker.remote()
    ray.get(worker.ping.remote())

    async def scenario():
        await replica.init_hybrid(_WorkerGroup([worker]))
        assert replica.rollout_mode == RolloutMode.HYBRID
        server = replica.server_handle
        assert replica.server_address and ":" in replica.server_address

        prompts = [[7 + i, 30 + 2 * i, 90 + i] for i in range(8)]
        greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

        async def run_all():
            refs = [
                server.generate.remote(prompt_ids=p, sampling_params=dict(greedy), request_id=f"r{i}")
                for i, p in enumerate(prompts)
            ]
            return await asyncio.gather(*refs)

        before = await run_all()
        stats = await replica.get_stats()
        assert stats["num_requests"] == 8
        assert stats["num_batches"] < 8, stats  # concurrent requests shared generate calls

        # Lifecycle calls verl makes around a training step.
        await replica.sleep()
        await replica.wake_up()
        await replica.abort_all_requests()
        await replica.resume_generation()
        await replica.clear_kv_cache()
        await replica.release_kv_cache()
        await replica.resume_kv_cache()

        # Weight sync the way verl's actor does it: the adapter in the trainer process drains named tensors.
        adapter = get_rollout_class("hf", "async")(config=config, model_config=model_config, device_mesh=None)
        current = await server.get_weights.remote()
        # A value-wise change keeps tied tensors (embeddings / lm_head) equal, as the actor's state dict has them.
        new = {k: 1.5 * v + 0.1 for k, v in current.items() if v.is_floating_point()}
        await adapter.resume(tags=["weights"])
        await adapter.update_weights(iter(new.items()), global_steps=3)
        await adapter.resume(tags=["kv_cache"])
        assert adapter.last_update["received"] == len(new)

        after = await run_all()
        loaded = await server.get_weights.remote()
        for k, v in new.items():
            torch.testing.assert_close(loaded[k], v)
        return before, after

    try:
        before, after = asyncio.run(scenario())
    finally:
        for s in replica.servers:
            ray.kill(s)
        ray.kill(worker)
    assert all(o.extra_fields["global_steps"] is None for o in before)
    assert all(o.extra_fields["global_steps"] == 3 for o in after)
    assert [o.token_ids for o in before] != [o.token_ids for o in after]
    for o in before + after:
        assert len(o.token_ids) == len(o.log_probs) and 1 <= len(o.token_ids) <= 12
