"""The library candidate for the grading pool: pebble's ``ProcessPool`` over a ``forkserver`` context.

Built only to be measured against :class:`verl_agrae.reward.GradingPool` by ``reward_bench.py`` (same interface:
``check``, ``check_many``, ``stats``, ``worker_pids``, ``close``), keeping what the hand-written pool promises where
pebble allows it:

* the grader is preloaded and warmed in the forkserver (``multiprocessing.set_forkserver_preload``), so a worker
  that replaces a killed one is forked warm;
* each check runs under the same soft timer as the hand-written workers (the worker's own ``ITIMER_REAL`` at 90%
  of the limit), and pebble's per-task timeout kills and replaces a worker that overruns it;
* a worker that dies mid-check (``ProcessExpired``) is counted and the item retried with the time it has left;
* timeouts, hard kills, crashes and restarts are counted.

Requires ``pip install pebble`` (the ``bench`` extra).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout

from verl_agrae.reward.pool import CheckResult, PoolStats

_SOFT_FRACTION = 0.9
_WARM_ENV = "VERL_AGRAE_PEBBLE_WARM"


def _warm() -> None:
    from verl_agrae.reward.worker import _warm_up

    _warm_up()


def _init_worker() -> None:
    from verl_agrae.reward.worker import _Timer

    signal.signal(signal.SIGALRM, _Timer.handler)


def _check_task(pred: str, truth: str, in_text: bool, soft_timeout: float) -> tuple[str, bool, str]:
    """Runs in a pebble worker (on its main thread): the same check and soft timer as ``reward/worker.py``."""
    from verl_agrae.reward.verify import answer_in_text, math_equal
    from verl_agrae.reward.worker import SoftTimeout, _Timer

    status, equal, extracted = "error", False, ""
    try:
        _Timer.armed = True
        signal.setitimer(signal.ITIMER_REAL, max(soft_timeout, 0.001))
        try:
            if in_text:
                equal, extracted = answer_in_text(pred, truth)
            else:
                equal = math_equal(pred, truth)
            status = "ok"
        finally:
            _Timer.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SoftTimeout:
        status = "timeout"
    except BaseException:  # noqa: BLE001 - as in the hand-written worker: any failure means "not equal"
        status = "error"
    return status, bool(equal), extracted


# Imported by the forkserver as a preload module: warm the grader there once, so that every worker forked from it
# starts warm (the environment variable is set by the process that creates the pool).
if os.environ.get(_WARM_ENV) == "1" and __name__ != "__main__":
    _warm()


class PebbleGradingPool:
    """pebble ``ProcessPool`` with per-task hard timeouts, on a forkserver context with the grader preloaded.

    Args:
        num_workers: worker processes.
        timeout: default limit in seconds per check.
    """

    def __init__(self, num_workers: int = 1, timeout: float = 5.0) -> None:
        from pebble import ProcessPool

        os.environ[_WARM_ENV] = "1"
        # Global to this process and effective only if the forkserver is not running yet (it is started by the
        # first pool below): other forkserver users of the process share the preload.
        multiprocessing.set_forkserver_preload(["verl_agrae.reward.verify", "math_verify", __name__])
        self.num_workers = int(num_workers)
        self.timeout = float(timeout)
        self._stats = PoolStats()
        self._lock = threading.Lock()
        self._pool = ProcessPool(
            max_workers=self.num_workers, initializer=_init_worker, context=multiprocessing.get_context("forkserver")
        )

    def __enter__(self) -> PebbleGradingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> PebbleGradingPool:
        """Start the forkserver and the workers, and wait until each has run one item."""
        futures = [self._pool.schedule(_check_task, args=("1", "1", False, 600.0)) for _ in range(self.num_workers)]
        for f in futures:
            f.result()
        return self

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()

    def _bump(self, name: str) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)

    def stats(self) -> PoolStats:
        with self._lock:
            return dataclasses.replace(self._stats)

    @property
    def worker_pids(self) -> list[int]:
        return sorted(self._pool._pool_manager.worker_manager.workers)  # pebble has no public accessor

    def check(self, pred: str, truth: str, timeout: float | None = None, *, in_text: bool = False) -> CheckResult:
        from pebble import ProcessExpired

        budget = self.timeout if timeout is None else float(timeout)
        self._bump("checks")
        for _attempt in range(3):
            future = self._pool.schedule(
                _check_task, args=(pred, truth, in_text, budget * _SOFT_FRACTION), timeout=budget
            )
            started = time.monotonic()
            try:
                status, equal, extracted = future.result()
            except FutureTimeout:
                self._bump("timeouts")
                self._bump("hard_kills")
                self._bump("worker_restarts")
                return CheckResult(False, timeout=True)
            except ProcessExpired:
                self._bump("crashes")
                self._bump("worker_restarts")
                budget -= time.monotonic() - started  # includes queueing: pebble does not say when the task began
                if budget <= 0.01:
                    break
                continue
            if status == "timeout":
                self._bump("timeouts")
                return CheckResult(False, timeout=True)
            if status == "error":
                self._bump("errors")
                return CheckResult(False, error=True)
            return CheckResult(equal, pred=extracted if in_text else None)
        self._bump("errors")
        return CheckResult(False, error=True)

    def check_many(
        self,
        pairs: Sequence[tuple[str, str] | tuple[str, str, bool]],
        timeout: float | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> list[CheckResult]:
        """pebble's own way: schedule every item, collect in input order; a crashed worker's item is redone."""
        from pebble import ProcessExpired

        budget = self.timeout if timeout is None else float(timeout)
        futures = [
            self._pool.schedule(
                _check_task, args=(p[0], p[1], len(p) > 2 and bool(p[2]), budget * _SOFT_FRACTION), timeout=budget
            )
            for p in pairs
        ]
        results = []
        for pair, future in zip(pairs, futures, strict=True):
            self._bump("checks")
            try:
                status, equal, extracted = future.result()
                if status == "ok":
                    res = CheckResult(equal, pred=extracted if len(pair) > 2 and pair[2] else None)
                elif status == "timeout":
                    self._bump("timeouts")
                    res = CheckResult(False, timeout=True)
                else:
                    self._bump("errors")
                    res = CheckResult(False, error=True)
            except FutureTimeout:
                for name in ("timeouts", "hard_kills", "worker_restarts"):
                    self._bump(name)
                res = CheckResult(False, timeout=True)
            except ProcessExpired:
                self._bump("crashes")
                self._bump("worker_restarts")
                res = self.check(pair[0], pair[1], budget, in_text=len(pair) > 2 and bool(pair[2]))
            results.append(res)
            if progress is not None:
                progress(1)
        return results
