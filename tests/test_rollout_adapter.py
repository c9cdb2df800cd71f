"""The ``hf`` adapter's weight sync from a trainer rank, against a stand-in server (no Ray)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch


class _Method:
    """Mimics a Ray actor method: ``.remote(...)`` returns an awaitable of the result."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        async def call():
            return self.fn(*args, **kwargs)

        return call()


class _StandInServer:
    def __init__(self):
        self.buckets: list[list[tuple[str, torch.Tensor]]] = []
        self.events: list = []
        self.load_weights = _Method(lambda bucket: self.buckets.append(list(bucket)) or len(bucket))
        self.finish_weight_update = _Method(lambda steps: self.events.append(("finish", steps)) or {"received": 0})
        self.wake_up = _Method(lambda tags: self.events.append(("wake_up", tuple(tags))))
        self.sleep = _Method(lambda: self.events.append(("sleep",)))


@pytest.fixture
def configs(tiny_model_dir):
    from verl_agrae.testing.rollout import rollout_configs

    return rollout_configs(tiny_model_dir)


def _adapter(configs, rank, monkeypatch, bucket_mb=1, tp=1):
    import verl  # noqa: F401  (our entry point registers hf)
    from verl.workers.rollout.base import get_rollout_class

    config, model_config = configs
    engine = dataclasses.replace(config.checkpoint_engine, update_weights_bucket_megabytes=bucket_mb)
    config = dataclasses.replace(config, tensor_model_parallel_size=tp, checkpoint_engine=engine)
    monkeypatch.setenv("RANK", str(rank))
    adapter = get_rollout_class("hf", "async")(config=config, model_config=model_config, device_mesh=None)
    adapter.server_handle = _StandInServer()
    return adapter


def _weights(consumed):
    # 0.6 MiB each: two never fit one 1 MiB bucket.
    for i in range(5):
        consumed.append(i)
        yield f"layer.{i}.weight", torch.full((150, 1024), float(i))


def test_leader_ships_all_tensors_in_buckets(configs, monkeypatch):
    adapter = _adapter(configs, rank=0, monkeypatch=monkeypatch)
    consumed = []
    asyncio.run(adapter.update_weights(_weights(consumed), global_steps=4))
    server = adapter.server_handle
    assert consumed == [0, 1, 2, 3, 4]
    assert [len(b) for b in server.buckets] == [1, 1, 1, 1, 1]
    names = [n for b in server.buckets for n, _ in b]
    assert names == [f"layer.{i}.weight" for i in range(5)]
    assert all(float(t[0, 0]) == i for i, (_, t) in enumerate(x for b in server.buckets for x in b))
    assert server.events == [("finish", 4)]


def test_bigger_buckets_group_tensors(configs, monkeypatch):
    adapter = _adapter(configs, rank=0, monkeypatch=monkeypatch, bucket_mb=2)
    asyncio.run(adapter.update_weights(_weights([])))
    assert [len(b) for b in adapter.server_handle.buckets] == [3, 2]


def test_other_ranks_of_a_replica_drain_the_generator_but_send_nothing(configs, monkeypatch):
    # tp=2: ranks 0 and 1 form replica 0; rank 1 must still iterate (full_tensor() is a collective).
    adapter = _adapter(configs, rank=1, monkeypatch=monkeypatch, tp=2)
    assert (adapter.replica_rank, adapter.is_leader_rank) == (0, False)
    consumed = []
    asyncio.run(adapter.update_weights(_weights(consumed), global_steps=1))
    asyncio.run(adapter.resume(tags=["weights"]))
    asyncio.run(adapter.release())
    assert consumed == [0, 1, 2, 3, 4]
    assert adapter.server_handle.buckets == [] and adapter.server_handle.events == []
    leader = _adapter(configs, rank=2, monkeypatch=monkeypatch, tp=2)
    assert (leader.replica_rank, leader.is_leader_rank) == (1, True)
    asyncio.run(leader.resume(tags=["weights"]))
    asyncio.run(leader.release())
    assert leader.server_handle.events == [("wake_up", ("weights",)), ("sleep",)]


def test_unsupported_wire_formats_are_refused(configs, monkeypatch):
    adapter = _adapter(configs, rank=0, monkeypatch=monkeypatch)
    with pytest.raises(NotImplementedError, match="delta_flush"):
        asyncio.run(adapter.update_weights(iter([]), wire_format="delta_flush"))
    with pytest.raises(NotImplementedError, match="lora.merge"):
        asyncio.run(adapter.update_weights(iter([]), peft_config={"r": 8}))
