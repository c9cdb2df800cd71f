"""``gloo``: a CPU checkpoint engine for verl, so the separate (standalone-rollout) layouts run without GPUs.

verl's ``separate_async`` trainer moves the actor's weights to rollout replicas on their own resource pool
through a *checkpoint engine* (``actor_rollout_ref.rollout.checkpoint_engine.backend``); every engine verl
ships (nccl, nixl, mooncake, hccl, kimi) needs GPUs or RDMA, and ``naive`` only works when actor and rollout
share a process. This one sends the weights over a private ``torch.distributed`` gloo group made of actor
rank 0 (the sender) and every rollout worker (receivers); it works on CPU-only nodes, across nodes too.

Select it with ``actor_rollout_ref.rollout.checkpoint_engine.backend=gloo`` (``verl-agrae train`` sets it for CPU
runs of ``separate_async``). Our entry point registers it with verl's ``CheckpointEngineRegistry`` in every
process (:mod:`verl_agrae.integration.backends`); this module only defines the class.

One weight sync, as verl's ``CheckpointEngineManager`` drives it:

1. ``prepare`` on every worker; actor rank 0 opens a ``TCPStore`` on a free port and reports its address.
2. ``build_topology``: actor rank 0 is group rank 0, other actor ranks sit out (-1), rollout workers are 1..N.
3. ``init_process_group``: each member joins a new gloo group through that store.
4. ``send_weights`` / ``receive_weights``: the actor's ``(name, tensor)`` stream is packed into byte buckets
   of ``update_weights_bucket_megabytes``; a tensor larger than a bucket is split across buckets. Each bucket
   is three broadcasts: its sizes, a JSON header naming the pieces, and the bytes. The sender packs the next
   bucket while the previous one is on the wire. Receivers yield owned copies (never views into the reused
   receive buffer), so a consumer may keep them.
5. ``finalize`` drops the group and the store (rebuilt for every sync: syncs happen once per step, and a
   fresh group survives replicas being added or removed between syncs).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from verl.checkpoint_engine.base import CheckpointEngine
from verl.workers.rollout.utils import ensure_async_iterator

__all__ = ["BACKEND_NAME", "GlooCheckpointEngine", "Piece"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

BACKEND_NAME = "gloo"
_SENDER = 0  # group rank of actor rank 0
_SIT_OUT = -1  # group rank of actor ranks that only drain the (collective) weight generator


@dataclass(frozen=True)
class Piece:
    """One contiguous byte range of one tensor inside a bucket.

    Attributes:
        name: the weight's name (HF naming, as the actor engine yields it).
        dtype: ``str(torch.dtype)`` without the ``torch.`` prefix, e.g. ``"float32"``.
        shape: the full tensor's shape.
        start: first byte of this piece within the tensor.
        nbytes: bytes in this piece.
        offset: where the piece starts in the bucket.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int
    offset: int

    @property
    def total_bytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * getattr(torch, self.dtype).itemsize


def _node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address().strip("[]")
    except Exception:  # outside Ray (unit tests, scripts): loopback is right for one machine
        pass
    return "127.0.0.1"


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a CPU, contiguous copy of ``tensor`` (DTensors gathered first)."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    tensor = tensor.detach().to("cpu").contiguous()
    return tensor.reshape(-1).view(torch.uint8)


class _Bucket:
    """A reusable byte buffer plus the pieces packed into it so far."""

    def __init__(self, capacity: int) -> None:
        self.data = torch.empty(capacity, dtype=torch.uint8)
        self.pieces: list[Piece] = []
        self.used = 0

    @property
    def free(self) -> int:
        return self.data.numel() - self.used

    def add(self, name: str, tensor: torch.Tensor, raw: torch.Tensor, start: int, nbytes: int) -> None:
        self.data[self.used : self.used + nbytes].copy_(raw[start : start + nbytes])
        dtype = str(tensor.dtype).removeprefix("torch.")
        self.pieces.append(Piece(name, dtype, tuple(tensor.shape), start, nbytes, self.used))
        self.used += nbytes

    def reset(self) -> None:
        self.pieces, self.used = [], 0


class GlooCheckpointEngine(CheckpointEngine):
    """Actor-to-rollout weight transfer over a gloo group (CPU tensors; see the module docstring).

    Args:
        bucket_size: bytes per bucket (verl passes ``update_weights_bucket_megabytes << 20``). Two buckets
            are held on the sender (double buffering), one on each receiver.
        is_master: True on actor rank 0 (verl sets it on actor workers; rollout workers leave it False).
        timeout_s: how long a broadcast or the group's rendezvous may wait for the other side.
    """

    def __init__(self, bucket_size: int, is_master: bool = False, timeout_s: float = 600.0, **_: Any) -> None:
        if int(bucket_size) <= 0:
            raise ValueError(f"checkpoint engine bucket_size must be > 0 bytes, got {bucket_size}")
        self.bucket_size = int(bucket_size)
        self.is_master = bool(is_master)
        self.timeout = datetime.timedelta(seconds=float(timeout_s))
        self.rank: int | None = None
        self.world_size: int | None = None
        self._store: dist.Store | None = None
        self._group: dist.ProcessGroup | None = None
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ group life cycle

    def prepare(self) -> dict[str, Any]:
        """Open the rendezvous store on actor rank 0; every worker returns its metadata for the topology."""
        if not self.is_master:
            return {"master": None}
        host = _node_ip()
        # port=0: the OS picks a free port, and the store owns it from now on (no race with other jobs).
        self._store = dist.TCPStore(host, 0, None, True, self.timeout, wait_for_workers=False)
        return {"master": {"host": host, "port": int(self._store.port)}}

    @classmethod
    def build_topology(
        cls, actor_wg_world_size: int, rollout_world_size: int, metadata: list[dict[str, Any]]
    ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """Actor rank 0 sends; the other actor ranks sit out; rollout workers are group ranks 1..N.

        Args:
            actor_wg_world_size: number of actor workers.
            rollout_world_size: number of rollout workers over all replicas.
            metadata: ``prepare()`` results, actor workers first (verl's order).
        """
        master = metadata[0].get("master") if metadata and isinstance(metadata[0], dict) else None
        if master is None:
            raise RuntimeError(
                "gloo checkpoint engine: actor rank 0 did not open a rendezvous store (is_master was not set on "
                "the first actor worker)"
            )
        world_size = 1 + rollout_world_size
        actor = {
            "rank": [_SENDER] + [_SIT_OUT] * (actor_wg_world_size - 1),
            "world_size": [world_size] * actor_wg_world_size,
            "master_host": [master["host"]] * actor_wg_world_size,
            "master_port": [master["port"]] * actor_wg_world_size,
        }
        rollout = {
            "rank": list(range(1, world_size)),
            "world_size": [world_size] * rollout_world_size,
            "master_host": [master["host"]] * rollout_world_size,
            "master_port": [master["port"]] * rollout_world_size,
        }
        return actor, rollout

    def init_process_group(self, rank: int, world_size: int, master_host: str, master_port: int) -> None:
        """Join the transfer group (blocks until every member has joined)."""
        self.rank, self.world_size = int(rank), int(world_size)
        if self.rank == _SIT_OUT:
            return
        if self.rank == _SENDER:
            if self._store is None:
                raise RuntimeError("gloo checkpoint engine: init_process_group on the sender before prepare()")
            store = self._store
        else:
            store = dist.TCPStore(master_host, int(master_port), None, False, self.timeout)
            self._store = store
        options = dist.ProcessGroupGloo._Options()
        options._timeout = self.timeout
        # An explicit device on this node's address: gloo's default resolves the hostname, which fails in
        # containers whose hostname does not resolve.
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=_node_ip())]
        self._group = dist.ProcessGroupGloo(dist.PrefixStore("agrae_ckpt", store), self.rank, self.world_size, options)
        logger.info("gloo checkpoint engine: rank %d of %d joined", self.rank, self.world_size)

    def finalize(self) -> None:
        """Drop the group and the store; the next sync builds new ones."""
        self._group = None
        self._store = None
        self.rank = self.world_size = None

    # ------------------------------------------------------------------ wire format

    def _broadcast(self, tensor: torch.Tensor) -> dist.Work:
        opts = dist.BroadcastOptions()
        opts.rootRank = _SENDER
        opts.rootTensor = 0
        return self._group.broadcast([tensor], opts)

    def _start_bucket(self, bucket: _Bucket, is_last: bool) -> list[dist.Work]:
        header = json.dumps(
            {
                "last": is_last,
                "pieces": [[p.name, p.dtype, list(p.shape), p.start, p.nbytes, p.offset] for p in bucket.pieces],
            }
        ).encode()
        header_t = torch.frombuffer(bytearray(header), dtype=torch.uint8)
        sizes = torch.tensor([header_t.numel(), bucket.used], dtype=torch.int64)
        # Gloo matches collectives by the order they are issued in (per-group tags), so all three can be queued.
        works = [self._broadcast(sizes), self._broadcast(header_t)]
        if bucket.used:  # an empty last bucket (nothing left to send) has no payload broadcast
            works.append(self._broadcast(bucket.data[: bucket.used]))
        return works

    # ------------------------------------------------------------------ sender

    @torch.no_grad()
    async def send_weights(self, weights: Iterable[tuple[str, torch.Tensor]], global_steps: int | None = None) -> dict:
        """Broadcast every ``(name, tensor)`` from actor rank 0; other actor ranks only drain the stream.

        Returns:
            ``{}``: verl merges the sender's return value into the step metrics; timing goes to the log.
        """
        if self.rank is None:
            raise RuntimeError("gloo checkpoint engine: send_weights before init_process_group")
        if self.rank > _SENDER:
            raise RuntimeError("gloo checkpoint engine: rollout workers receive, they do not send")
        if self.rank == _SIT_OUT:
            # Producing each full tensor is collective over the actor's ranks: every rank must iterate.
            async for _ in ensure_async_iterator(weights):
                pass
            return {}

        start = time.perf_counter()
        buckets = [_Bucket(self.bucket_size), _Bucket(self.bucket_size)]
        current, in_flight = 0, None  # in_flight: (works) of the other bucket, still on the wire
        tensors = total = 0

        async def ship(is_last: bool) -> None:
            nonlocal current, in_flight
            if in_flight is not None:
                await _wait_all(in_flight)
            in_flight = self._start_bucket(buckets[current], is_last)
            # The other bucket was on the wire until the wait above: free to refill now.
            current = 1 - current
            buckets[current].reset()

        async for name, tensor in ensure_async_iterator(weights):
            raw = _as_bytes(tensor)
            tensors += 1
            total += raw.numel()
            done = 0
            while True:
                bucket = buckets[current]
                if bucket.free == 0 or (bucket.pieces and bucket.free < raw.numel() - done and done == 0):
                    # Start whole tensors in a fresh bucket when they do not fit, so small tensors are not split;
                    # a tensor larger than a whole bucket is split anyway.
                    await ship(is_last=False)
                    continue
                take = min(bucket.free, raw.numel() - done)
                bucket.add(name, tensor, raw, done, take)
                done += take
                if done >= raw.numel():
                    break
        await ship(is_last=True)
        await _wait_all(in_flight)
        seconds = time.perf_counter() - start
        self.last_stats = {"tensors": tensors, "bytes": total, "seconds": seconds}
        logger.info(
            "gloo checkpoint engine: sent %d tensors, %.1f MiB to %d receiver(s) in %.2fs",
            tensors,
            total / 2**20,
            (self.world_size or 1) - 1,
            seconds,
        )
        return {}

    # ------------------------------------------------------------------ receiver

    @torch.no_grad()
    async def receive_weights(self, global_steps: int | None = None) -> AsyncIterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` in the sender's order; each tensor is a new CPU tensor owned by the caller."""
        if self.rank is None or self.rank <= _SENDER:
            raise RuntimeError("gloo checkpoint engine: receive_weights needs a rollout rank (init_process_group)")
        start = time.perf_counter()
        buffer = torch.empty(self.bucket_size, dtype=torch.uint8)
        partial: dict[str, torch.Tensor] = {}  # a tensor split over buckets, filled as pieces arrive
        tensors = total = 0
        while True:
            sizes = torch.empty(2, dtype=torch.int64)
            await _wait_all([self._broadcast(sizes)])
            header_len, used = int(sizes[0]), int(sizes[1])
            header_t = torch.empty(header_len, dtype=torch.uint8)
            works = [self._broadcast(header_t)]
            if used:
                works.append(self._broadcast(buffer[:used]))
            await _wait_all(works)
            header = json.loads(bytes(header_t.numpy()))
            for name, dtype_name, shape, start_byte, nbytes, offset in header["pieces"]:
                piece = Piece(name, dtype_name, tuple(shape), start_byte, nbytes, offset)
                data = buffer[offset : offset + nbytes]
                total += nbytes
                if start_byte == 0 and nbytes == piece.total_bytes:
                    tensors += 1
                    yield name, _from_bytes(data.clone(), piece)
                    continue
                flat = partial.get(name)
                if flat is None:
                    if start_byte != 0:
                        raise RuntimeError(f"gloo checkpoint engine: {name!r} arrived from byte {start_byte}")
                    flat = partial[name] = torch.empty(piece.total_bytes, dtype=torch.uint8)
                flat[start_byte : start_byte + nbytes].copy_(data)
                if start_byte + nbytes == piece.total_bytes:
                    tensors += 1
                    yield name, _from_bytes(partial.pop(name), piece)
            if header["last"]:
                break
        if partial:
            raise RuntimeError(f"gloo checkpoint engine: incomplete tensors at the end of the sync: {sorted(partial)}")
        seconds = time.perf_counter() - start
        self.last_stats = {"tensors": tensors, "bytes": total, "seconds": seconds}
        logger.info("gloo checkpoint engine: rank %d received %d tensors in %.2fs", self.rank, tensors, seconds)


def _from_bytes(data: torch.Tensor, piece: Piece) -> torch.Tensor:
    return data.view(getattr(torch, piece.dtype)).reshape(piece.shape)


async def _wait_all(works: list[dist.Work]) -> None:
    # Waiting blocks; a worker thread keeps the actor's event loop (Ray calls, the rollout server) responsive.
    for work in works:
        await asyncio.to_thread(work.wait)
