"""A pool of grading processes with a hard wall-clock timeout per item.

Every symbolic check runs in a worker process (see ``worker.py`` for how they are started). The calling thread
waits on the worker's result pipe for at most ``timeout`` seconds; a worker that overruns is SIGKILLed and a
fresh one is forked from the warm template process. Timeouts and restarts are counted, never hidden. Nothing
here installs a signal handler in the caller's process, so the pool works from any thread, event-loop
executor or threaded Ray actor.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

from verl_agrae.reward.worker import FORK, PID_FORMAT, READY

__all__ = ["CheckResult", "GradingPool", "PoolStats", "get_default_pool", "shutdown_default_pool"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
# The worker's own timer fires at this fraction of the timeout, so ordinary slow sympy calls end without a
# kill; the kill at the full timeout is the backstop for code stuck in C (big-integer arithmetic).
_SOFT_FRACTION = 0.9
_STARTUP_TIMEOUT_S = 180.0
_MAX_MESSAGE_CHARS = 16_000
# "-c" rather than "-m verl_agrae.reward.worker": the package __init__ imports worker.py, and runpy warns
# about (and double-executes) a module that is imported before it runs as __main__.
_ZYGOTE_CMD = "import sys; from verl_agrae.reward.worker import zygote_main; zygote_main(int(sys.argv[1]))"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one symbolic check.

    Attributes:
        equal: math-verify's verdict (False on timeout or error).
        timeout: the check ran out of time (worker timer or hard kill).
        error: the check failed for another reason (parse error, worker died twice).
        pred: for a check with ``in_text=True``: the answer math-verify extracted from the response ("" if none).
    """

    equal: bool
    timeout: bool = False
    error: bool = False
    pred: str | None = None


@dataclasses.dataclass
class PoolStats:
    """Counters of a :class:`GradingPool` (a snapshot; see ``GradingPool.stats``)."""

    checks: int = 0
    timeouts: int = 0
    hard_kills: int = 0
    crashes: int = 0
    errors: int = 0
    worker_restarts: int = 0
    zygote_restarts: int = 0


class _Worker:
    """Parent-side handle of one worker process (not our child: the zygote reaps it)."""

    def __init__(self, pid: int, send: Connection, recv: Connection) -> None:
        self.pid = pid
        self.send = send
        self.recv = recv
        try:
            # A pidfd names this exact process, so a late kill can never hit a recycled pid.
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def kill(self) -> None:
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        self.close()

    def close(self) -> None:
        for conn in (self.send, self.recv):
            try:
                conn.close()
            except OSError:
                pass
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = None


class _Zygote:
    """The template process that forks workers."""

    def __init__(self) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        # Make sure the fresh interpreter can import this package even when it is not installed.
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ZYGOTE_CMD, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                # Own session: a Ctrl-C meant for the caller must not kill graders mid-batch; the pool closes them.
                start_new_session=True,
            )
        finally:
            child_sock.close()
        self.sock = parent_sock
        self._ready = False

    def wait_ready(self, timeout: float) -> None:
        if self._ready:
            return
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except TimeoutError as exc:
            raise RuntimeError(f"grading template process did not start within {timeout:.0f} s") from exc
        finally:
            self.sock.settimeout(None)
        if data != READY:
            code = self.proc.poll()
            raise RuntimeError(
                f"grading template process failed to start (exit code {code}); see its stderr above. "
                "Is math-verify installed in this interpreter?"
            )
        self._ready = True

    def fork_worker(self) -> _Worker:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            socket.send_fds(self.sock, [FORK], [task_r, result_w])
            data = b""
            size = struct.calcsize(PID_FORMAT)
            while len(data) < size:
                chunk = self.sock.recv(size - len(data))
                if not chunk:
                    raise ConnectionError("grading template process exited")
                data += chunk
        except BaseException:
            for fd in (task_w, result_r):
                os.close(fd)
            raise
        finally:
            os.close(task_r)
            os.close(result_w)
        (pid,) = struct.unpack(PID_FORMAT, data)
        return _Worker(pid, Connection(task_w, readable=False), Connection(result_r, writable=False))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            self.sock.close()  # EOF makes the zygote exit
        except OSError:
            pass
        if not self._ready:
            # Still importing math-verify (the pool was never used): it would only notice the EOF after its
            # warm-up, seconds from now. It has forked no worker yet, so there is nothing to let it clean up.
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _close_pool_resources(owner_pid: int, zygote_box: list, workers: set) -> None:
    # Module-level so weakref.finalize does not keep the pool alive.
    if os.getpid() != owner_pid:
        return  # a forked copy of the owner must not kill the owner's workers when it exits
    for w in list(workers):
        w.kill()
    workers.clear()
    if zygote_box and zygote_box[0] is not None:
        zygote_box[0].close()
        zygote_box[0] = None


class GradingPool:
    """Worker processes that run symbolic checks with a hard per-item wall-clock timeout.

    Thread-safe: any number of threads may call :meth:`check` at once; each call holds one worker until its
    item finishes or overruns. Use as a context manager or call :meth:`close`; pools left open are closed at
    interpreter exit.

    Args:
        num_workers: worker processes (each runs one check at a time).
        timeout: default hard limit in seconds for one check.
        startup_timeout: how long to wait for the template process to import math-verify.

    Example:
        >>> with GradingPool(num_workers=2, timeout=5.0) as pool:
        ...     pool.check("\\\\frac{3}{4}", "0.75").equal
        True
    """

    def __init__(
        self, num_workers: int = 1, timeout: float = DEFAULT_TIMEOUT_S, startup_timeout: float = _STARTUP_TIMEOUT_S
    ) -> None:
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")
        if not float(timeout) > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.num_workers = int(num_workers)
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self._stats = PoolStats()
        self._stats_lock = threading.Lock()
        self._zygote_lock = threading.Lock()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: set[_Worker] = set()
        self._zygote_box: list[_Zygote | None] = [_Zygote()]
        self._closed = False
        self._broken: BaseException | None = None  # set when no replacement worker could be started
        self._started = False
        self._start_lock = threading.Lock()
        self._task_ids = itertools.count()
        self._finalizer = weakref.finalize(self, _close_pool_resources, os.getpid(), self._zygote_box, self._workers)

    # ----------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the workers and the template process. Idempotent."""
        self._closed = True
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> GradingPool:
        """Wait for the template process and fork the workers (done lazily by the first check otherwise)."""
        with self._start_lock:
            if self._started:
                return self
            self._check_open()
            for _ in range(self.num_workers):
                self._idle.put(self._new_worker())
            self._started = True
        return self

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("GradingPool is closed")
        if self._broken is not None:
            raise RuntimeError(f"GradingPool cannot start workers any more: {self._broken}")

    def _acquire(self) -> _Worker:
        # Poll with a timeout so that threads waiting for a worker notice a closed or broken pool.
        while True:
            self._check_open()
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue

    def _new_worker(self) -> _Worker:
        with self._zygote_lock:
            self._check_open()
            for attempt in range(2):
                zyg = self._zygote_box[0]
                try:
                    if zyg is None or not zyg.alive():
                        raise ConnectionError("grading template process is gone")
                    zyg.wait_ready(self.startup_timeout)
                    worker = zyg.fork_worker()
                    break
                except (ConnectionError, OSError) as exc:
                    if attempt == 1:
                        raise RuntimeError(f"cannot start a grading worker: {exc}") from exc
                    logger.warning("Grading template process lost (%s); starting a new one", exc)
                    if zyg is not None:
                        zyg.close()
                    self._zygote_box[0] = _Zygote()
                    self._bump("zygote_restarts")
            self._workers.add(worker)
            return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.discard(worker)
        self._bump("worker_restarts")
        if self._closed:
            return
        try:
            self._idle.put(self._new_worker())
        except BaseException as exc:
            self._broken = exc
            raise

    def _bump(self, name: str, by: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, name, getattr(self._stats, name) + by)

    def stats(self) -> PoolStats:
        """A snapshot of the counters (checks, timeouts, hard kills, crashes, errors, restarts)."""
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the current workers (for monitoring and tests)."""
        return sorted(w.pid for w in list(self._workers))

    @property
    def zygote_pid(self) -> int | None:
        """Pid of the template process that forks the workers (None once closed)."""
        zyg = self._zygote_box[0]
        return None if zyg is None else zyg.proc.pid

    # ------------------------------------------------------------------------------------------------ checking
    def check(self, pred: str, truth: str, timeout: float | None = None, *, in_text: bool = False) -> CheckResult:
        """Whether ``pred`` equals ``truth`` per math-verify, within ``timeout`` seconds of wall clock.

        Time spent waiting for a free worker (all busy with other threads' items) is not part of the timeout. A worker
        that dies mid-check (killed from outside) is replaced and the item retried with the time it has left.

        Args:
            pred: extracted prediction.
            truth: ground truth.
            timeout: per-item limit in seconds (default: the pool's).
            in_text: ``pred`` is a response without an explicit final answer: math-verify extracts the answer
                from it (its last expression) and the result's ``pred`` says what it found.

        Returns:
            The verdict; on timeout ``CheckResult(False, timeout=True)``.

        Raises:
            ValueError: for a non-positive timeout, non-str answers, or answers over 16,000 characters together.
            RuntimeError: if the pool is closed or cannot start workers.
        """
        limit = self.timeout if timeout is None else float(timeout)
        if not limit > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(pred, str) or not isinstance(truth, str):
            raise ValueError(f"check needs two str, got {type(pred).__name__} and {type(truth).__name__}")
        if len(pred) + len(truth) > _MAX_MESSAGE_CHARS:
            # Small messages fit in the pipe buffer, so sending never blocks on a worker that is not reading.
            raise ValueError(
                f"answers too long for a symbolic check: {len(pred) + len(truth)} characters "
                f"(limit {_MAX_MESSAGE_CHARS}); compare such answers as strings"
            )
        if not self._started:
            self.start()
        self._bump("checks")
        # Only time spent inside a worker counts against the limit. A retry happens only when a worker died under
        # us (killed from outside, OOM); it gets the time left, so the item never gets more than ``limit`` of
        # worker time. Waiting for a replacement worker is not counted (it takes milliseconds unless the
        # template process itself has to be restarted).
        budget = limit
        for _attempt in range(3):
            worker = self._acquire()
            task_id = next(self._task_ids)
            sent_at = time.monotonic()
            try:
                worker.send.send((task_id, pred, truth, budget * _SOFT_FRACTION, bool(in_text)))
                ready = worker.recv.poll(budget)
                reply = worker.recv.recv() if ready else None
            except (EOFError, OSError):
                budget -= time.monotonic() - sent_at  # before replacing: the replacement's start is not counted
                self._bump("crashes")
                self._replace(worker)
                if budget <= 0.01:
                    break
                continue
            if reply is None:
                self._bump("timeouts")
                self._bump("hard_kills")
                self._replace(worker)
                return CheckResult(False, timeout=True)
            self._idle.put(worker)
            reply_id, status, equal, extracted = reply
            if reply_id != task_id:  # cannot happen with one task in flight per worker; never trust a stray reply
                self._bump("errors")
                return CheckResult(False, error=True)
            if status == "timeout":
                self._bump("timeouts")
                return CheckResult(False, timeout=True)
            if status == "error":
                self._bump("errors")
                return CheckResult(False, error=True)
            return CheckResult(bool(equal), pred=extracted if in_text else None)
        self._bump("errors")
        return CheckResult(False, error=True)

    def check_many(
        self,
        pairs: Sequence[tuple[str, str] | tuple[str, str, bool]],
        timeout: float | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> list[CheckResult]:
        """Check many items in parallel; results in input order.

        Args:
            pairs: ``(prediction, ground truth)`` or ``(prediction, ground truth, in_text)`` (see :meth:`check`).
            timeout: per-item limit in seconds.
            progress: called with 1 after each finished item (e.g. ``tqdm.update``).
        """
        if not pairs:
            return []

        def one(pair: tuple[str, str] | tuple[str, str, bool]) -> CheckResult:
            try:
                res = self.check(pair[0], pair[1], timeout, in_text=len(pair) > 2 and bool(pair[2]))
            except (RuntimeError, ValueError) as exc:  # closed or broken pool, oversized item: lose the item only
                logger.error("grading failed: %s", exc)
                self._bump("errors")
                res = CheckResult(False, error=True)
            if progress is not None:
                progress(1)
            return res

        if len(pairs) == 1 or self.num_workers == 1:
            return [one(pair) for pair in pairs]

        with ThreadPoolExecutor(max_workers=min(self.num_workers, len(pairs)), thread_name_prefix="grading") as ex:
            return list(ex.map(one, pairs))


# ------------------------------------------------------------------------------------------- default pool
_default_lock = threading.Lock()
_default_pool: GradingPool | None = None
_default_pid: int | None = None


def default_num_workers() -> int:
    """Workers for the default pool: ``VERL_AGRAE_REWARD_WORKERS`` or min(4, CPU count)."""
    env = os.environ.get("VERL_AGRAE_REWARD_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError as exc:
            raise ValueError(f"VERL_AGRAE_REWARD_WORKERS must be an integer, got {env!r}") from exc
        if n < 1:
            raise ValueError(f"VERL_AGRAE_REWARD_WORKERS must be >= 1, got {n}")
        return n
    return max(1, min(4, os.cpu_count() or 1))


def default_timeout() -> float:
    """Per-item timeout of the default pool: ``VERL_AGRAE_REWARD_TIMEOUT`` seconds or 5."""
    env = os.environ.get("VERL_AGRAE_REWARD_TIMEOUT")
    if not env:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(env)
    except ValueError as exc:
        raise ValueError(f"VERL_AGRAE_REWARD_TIMEOUT must be a number of seconds, got {env!r}") from exc
    if not value > 0:
        raise ValueError(f"VERL_AGRAE_REWARD_TIMEOUT must be > 0, got {value}")
    return value


def get_default_pool() -> GradingPool:
    """The process-wide pool used by ``compute_score``, created on first use (thread-safe).

    A process forked after the pool was created (the pool's pipes belong to the parent) gets its own pool.
    """
    global _default_pool, _default_pid
    with _default_lock:
        if _default_pool is None or _default_pool.closed or _default_pid != os.getpid():
            _default_pool = GradingPool(num_workers=default_num_workers(), timeout=default_timeout())
            _default_pid = os.getpid()
        return _default_pool


def shutdown_default_pool() -> None:
    """Close the default pool (it is re-created on next use)."""
    global _default_pool
    with _default_lock:
        pool, _default_pool = _default_pool, None
    if pool is not None and _default_pid == os.getpid():
        pool.close()


atexit.register(shutdown_default_pool)
