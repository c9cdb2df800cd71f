"""The ``gloo`` checkpoint engine on a real gloo group: what the rollout workers receive is what actor rank 0 sent.

Members run as threads of this process, each with its own event loop and its own group rank (gloo does not
care whether ranks share a process), driven through the same calls verl's ``CheckpointEngineManager`` makes:
prepare -> build_topology -> init_process_group -> send/receive -> finalize.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import torch

from verl_agrae.checkpoint_engine.gloo import BACKEND_NAME, GlooCheckpointEngine


def _weights(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        ("embed.weight", torch.randn(50, 16, generator=g)),  # 3200 B: larger than the 1 KiB bucket, split
        ("layer.0.bias", torch.randn(7, generator=g)),
        ("layer.0.weight_bf16", torch.randn(9, 5, generator=g).to(torch.bfloat16)),
        ("scalar", torch.tensor(3.5, dtype=torch.float64)),
        ("empty", torch.empty(0, 4)),
        ("mask", torch.rand(33, generator=g) > 0.5),
        ("ids", torch.arange(300, dtype=torch.int64)),  # 2400 B: split too
        ("strided.T", torch.randn(6, 4, generator=g).t()),  # non-contiguous view
    ]


def _run_in_threads(jobs: list[Callable[[], object]], timeout: float = 60.0) -> list[object]:
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as e:  # re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a member of the transfer group hung"
    if errors:
        raise errors[0]
    return results


def _sync(actor: list[GlooCheckpointEngine], rollout: list[GlooCheckpointEngine], weights, collective_log=None):
    """One weight sync as verl's CheckpointEngineManager drives it; returns what each rollout worker got."""
    metadata = [e.prepare() for e in actor + rollout]
    actor_kwargs, rollout_kwargs = GlooCheckpointEngine.build_topology(len(actor), len(rollout), metadata)
    members = [(e, {k: v[i] for k, v in actor_kwargs.items()}) for i, e in enumerate(actor)]
    members += [(e, {k: v[i] for k, v in rollout_kwargs.items()}) for i, e in enumerate(rollout)]
    _run_in_threads([lambda e=e, kw=kw: e.init_process_group(**kw) for e, kw in members])

    def send(engine: GlooCheckpointEngine, rank: int):
        def stream():
            for name, tensor in weights:
                if collective_log is not None:
                    collective_log.append(rank)  # every actor rank must walk the stream (it is collective)
                yield name, tensor

        return asyncio.run(engine.send_weights(stream(), global_steps=1))

    def receive(engine: GlooCheckpointEngine):
        async def drain():
            return [(n, t) async for n, t in engine.receive_weights(global_steps=1)]

        return asyncio.run(drain())

    jobs = [lambda e=e, r=r: send(e, r) for r, e in enumerate(actor)] + [lambda e=e: receive(e) for e in rollout]
    results = _run_in_threads(jobs)
    for e in actor + rollout:
        e.finalize()
    return results[len(actor) :]


def _assert_same(received, sent) -> None:
    assert [n for n, _ in received] == [n for n, _ in sent]
    for (name, got), (_, want) in zip(received, sent, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name


def test_registered_with_verl():
    from verl.checkpoint_engine import CheckpointEngineRegistry

    assert CheckpointEngineRegistry.get(BACKEND_NAME) is GlooCheckpointEngine


def test_two_receivers_get_every_tensor_bitwise_in_small_buckets():
    bucket = 1024  # forces tensors split over buckets and many buckets per sync
    actor = [GlooCheckpointEngine(bucket, is_master=True), GlooCheckpointEngine(bucket)]
    rollout = [GlooCheckpointEngine(bucket), GlooCheckpointEngine(bucket)]
    sent = _weights()
    log: list[int] = []
    received = _sync(actor, rollout, sent, collective_log=log)
    for got in received:
        _assert_same(got, sent)
    # The sit-out actor rank walked the whole stream too; the sender shipped more than one bucket.
    assert log.count(0) == log.count(1) == len(sent)
    total = sum(t.numel() * t.element_size() for _, t in sent)
    assert actor[0].last_stats["bytes"] == total > 2 * bucket
    assert rollout[0].last_stats["tensors"] == len(sent)


def test_received_tensors_are_owned_copies_and_a_second_sync_reuses_the_engines():
    bucket = 1 << 20  # everything fits one bucket: received tensors must still not alias the receive buffer
    actor, rollout = [GlooCheckpointEngine(bucket, is_master=True)], [GlooCheckpointEngine(bucket)]
    first = _weights(0)
    (got1,) = _sync(actor, rollout, first)
    _assert_same(got1, first)
    storages = {t.untyped_storage().data_ptr() for _, t in got1 if t.numel()}
    assert len(storages) == sum(1 for _, t in got1 if t.numel()), "received tensors share storage"

    second = _weights(1)  # new values, new group on the same engine objects (verl rebuilds per sync)
    (got2,) = _sync(actor, rollout, second)
    _assert_same(got2, second)
    _assert_same(got1, first)  # the first sync's tensors were not overwritten by the second


def test_empty_stream_and_bad_arguments():
    actor, rollout = [GlooCheckpointEngine(64, is_master=True)], [GlooCheckpointEngine(64)]
    (got,) = _sync(actor, rollout, [])
    assert got == []
    with pytest.raises(ValueError, match="bucket_size"):
        GlooCheckpointEngine(0)
    with pytest.raises(RuntimeError, match="rendezvous store"):
        GlooCheckpointEngine.build_topology(1, 1, [{"master": None}, {"master": None}])
