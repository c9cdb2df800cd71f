"""Gather concurrent generation requests into batched ``generate`` calls.

verl's agent loop sends one prompt per request, all at about the same time. Serving them one by one leaves
a CPU or GPU mostly idle; this batcher queues requests and hands them to the generator in batches of up to
``max_batch_size`` sequences, waiting at most ``max_wait_s`` after the first request of a batch for more to
arrive. Requests that arrive while a batch is decoding form the next batch. Decoding runs in a worker
thread so the server keeps accepting requests and control calls meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from verl_agrae.rollout.generator import FINISH_ABORT, GenerationRequest, GenerationResult

__all__ = ["BatchStats", "RequestBatcher"]

logger = logging.getLogger(__name__)

RunBatch = Callable[[list[GenerationRequest], Callable[[], bool]], list[list[GenerationResult]]]


@dataclass
class BatchStats:
    """Counters of a batcher (for tests, logs and benchmarks)."""

    num_requests: int = 0
    num_batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    """Number of sequences (requests x n) of each batch, in order."""
    decode_seconds: float = 0.0
    """Wall time spent inside ``generate`` calls (compare with verl's ``timing_s/gen``)."""


@dataclass
class _Pending:
    request: GenerationRequest
    future: asyncio.Future


class RequestBatcher:
    """Queue requests and decode them in batches.

    Args:
        run_batch: blocking function decoding a list of requests; it receives a ``should_abort``
            callable to poll between steps (see :meth:`HFGenerator.generate`).
        max_batch_size: most sequences per batch (a single request with larger ``n`` still runs, alone).
        max_wait_s: how long to wait for more requests after the first one of a batch.
        executor: where ``run_batch`` runs (None: asyncio's default thread pool).
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int = 64,
        max_wait_s: float = 0.02,
        executor: Executor | None = None,
    ):
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.lock = asyncio.Lock()
        """Held while a batch decodes; hold it to change the model (weights, device) safely."""
        self.stats = BatchStats()
        self._queue: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._abort = threading.Event()
        self._idle: asyncio.Event | None = None
        self._num_running = 0
        self.decoding = asyncio.Event()
        """Set once the running batch has finished its first decoding step, i.e. every sequence in it holds at
        least one token; cleared when the batch ends. Lets callers (tests, monitoring) wait for "decoding has
        started" instead of sleeping. Needs a ``run_batch`` that polls ``should_abort`` before each step, as
        :meth:`HFGenerator.generate` does."""

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._idle = asyncio.Event()
            self._idle.set()
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, request: GenerationRequest) -> list[GenerationResult]:
        """Queue one request and wait for its ``n`` results."""
        self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        self.stats.num_requests += 1
        self._wakeup.set()
        return await future

    @property
    def num_queued(self) -> int:
        return len(self._queue)

    def _take_batch(self) -> list[_Pending]:
        batch, rows = [], 0
        while self._queue:
            n = self._queue[0].request.options.n
            if batch and rows + n > self.max_batch_size:
                break
            batch.append(self._queue.pop(0))
            rows += n
        return batch

    def _queued_rows(self) -> int:
        return sum(p.request.options.n for p in self._queue)

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue:
                continue
            # Give concurrent requests a moment to arrive, unless the batch is already full.
            deadline = time.monotonic() + self.max_wait_s
            while self._queued_rows() < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
                self._wakeup.clear()
            while self._queue:
                batch = self._take_batch()
                await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a caller may have been cancelled
        if not live:
            return
        self._idle.clear()
        self._num_running = len(live)
        loop = asyncio.get_running_loop()
        polls = 0

        def should_abort() -> bool:
            # Runs on the compute thread. The generator polls before every step, so the second poll comes right
            # after the first step: report it to the event loop, once per batch (call_soon_threadsafe is FIFO,
            # so the set lands before this batch's result and the clear below).
            nonlocal polls
            polls += 1
            if polls == 2:
                loop.call_soon_threadsafe(self.decoding.set)
            return self._abort.is_set()

        try:
            async with self.lock:
                self.stats.num_batches += 1
                self.stats.batch_sizes.append(sum(p.request.options.n for p in live))
                start = time.perf_counter()
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [p.request for p in live], should_abort
                )
                elapsed = time.perf_counter() - start
                self.stats.decode_seconds += elapsed
                logger.debug(
                    "hf rollout: decoded a batch of %d sequence(s) in %.3fs", self.stats.batch_sizes[-1], elapsed
                )
        except Exception as e:  # the batch failed: every caller in it gets the error, the loop goes on
            logger.exception("hf rollout: a batch of %d request(s) failed", len(live))
            for p in live:
                if not p.future.done():
                    p.future.set_exception(e)
        else:
            for p, res in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(res)
        finally:
            self._num_running = 0
            self.decoding.clear()
            self._idle.set()

    async def abort_all(self) -> int:
        """Stop the running batch at its next step and fail every queued request with an ``abort`` result.

        Returns once no batch is decoding. Aborted requests keep the tokens they already generated.

        Returns:
            Number of requests that were queued or decoding.
        """
        queued, self._queue = self._queue, []
        for p in queued:
            if not p.future.done():
                p.future.set_result(
                    [
                        GenerationResult(token_ids=[], log_probs=None, finish_reason=FINISH_ABORT)
                        for _ in range(p.request.options.n)
                    ]
                )
        running = self._num_running
        if self._idle is not None and not self._idle.is_set():
            self._abort.set()
            try:
                await self._idle.wait()
            finally:
                self._abort.clear()
        return len(queued) + running

    async def close(self) -> None:
        """Abort everything and stop the worker task."""
        await self.abort_all()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
