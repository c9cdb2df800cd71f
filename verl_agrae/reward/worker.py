"""Grading processes: a template ("zygote") process and the workers it forks.

Started as ``python -c "...zygote_main(<socket-fd>)"`` by :class:`verl_agrae.reward.pool.GradingPool`; this
module is never imported by the caller's process except for its constants.

Why a zygote: the caller may be a Ray actor or a trainer with torch and Ray threads, and forking such a
process is unsafe. The pool therefore starts one fresh interpreter (fork+exec through ``subprocess``, i.e.
spawn semantics, without re-running the caller's ``__main__`` the way ``multiprocessing``'s spawn and
forkserver do). That interpreter imports math-verify and sympy once, warms their caches, stays
single-threaded, and forks a worker on request: a replacement for a killed worker is ready in milliseconds
instead of re-importing sympy for seconds.

Protocol. The pool sends ``b"F"`` plus two pipe ends (task read end, result write end) over a Unix socket;
the zygote forks, answers the worker's pid as 8 bytes, and closes its copies of the pipe ends. A worker
loops: receive ``(task_id, pred, truth, soft_timeout_s, in_text)``, reply ``(task_id, status, equal, extracted)``
where status is "ok", "timeout" (its own timer fired) or "error"; with ``in_text`` the "pred" is a response
without an explicit answer, from which math-verify extracts one (``extracted``, else ""). Workers exit on EOF
(pool closed) and, through ``PR_SET_PDEATHSIG``, when the zygote dies; the zygote exits on EOF of its socket (pool
closed or caller died) and, quietly, when the pool closed before it was ready.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys

READY = b"R"
_MAX_EXTRACTED_CHARS = 1000  # replies stay far below the pipe buffer
FORK = b"F"
PID_FORMAT = "!q"


class SoftTimeout(BaseException):
    """Raised by the worker's own timer. A BaseException so that the ``except Exception`` blocks inside
    math-verify and sympy do not swallow it into a silent False."""


class _Timer:
    """SIGALRM-based soft timeout, valid here because each worker runs tasks on its main thread."""

    armed = False

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        if cls.armed:
            cls.armed = False
            raise SoftTimeout()


def _set_pdeathsig() -> None:
    """Ask Linux to SIGKILL this worker when the zygote dies (best effort elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _worker_loop(task_fd: int, result_fd: int, zygote_pid: int) -> None:
    from multiprocessing.connection import Connection

    from verl_agrae.reward.verify import answer_in_text, math_equal

    _set_pdeathsig()
    if os.getppid() != zygote_pid:  # the zygote died between fork and prctl
        os._exit(1)
    signal.signal(signal.SIGALRM, _Timer.handler)
    conn_in = Connection(task_fd, writable=False)
    conn_out = Connection(result_fd, readable=False)
    while True:
        try:
            task_id, pred, truth, soft_timeout, in_text = conn_in.recv()
        except (EOFError, OSError):
            os._exit(0)
        status, equal, extracted = "error", False, ""
        try:
            _Timer.armed = True
            signal.setitimer(signal.ITIMER_REAL, max(float(soft_timeout), 0.001))
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
        except BaseException:  # noqa: BLE001 - RecursionError, MemoryError, sympy internals: all mean "not equal"
            status = "error"
        try:
            conn_out.send((task_id, status, bool(equal), str(extracted)[:_MAX_EXTRACTED_CHARS]))
        except (OSError, SoftTimeout):
            os._exit(0)


_WARM_UP_PAIRS = (
    # One of each kind of comparison, right and wrong: sympy imports modules lazily on first use (the first tuple
    # comparison costs ~0.1 s), and doing that here means every forked worker inherits it instead of paying again.
    ("0.5", "\\frac{1}{2}"),
    ("(1,2]", "(1, 2]"),
    ("(2, 1)", "(1, 2)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("x^2 + 3x", "x(x+3)"),
    ("x^2 + 3x", "x(x+4)"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\frac{3\\pi}{4}", "\\frac{3}{4}\\pi"),
    ("50\\%", "50"),
    ("x = 5", "5"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\3\\end{pmatrix}"),
    ("7", "8"),
)


def _warm_up() -> None:
    import gc

    from verl_agrae.reward.verify import math_equal, quiet_math_verify

    quiet_math_verify()
    for pred, truth in _WARM_UP_PAIRS:
        math_equal(pred, truth)
    # Move everything alive now out of the collector's reach: forked workers then do not touch (and copy) these
    # pages on every full collection.
    gc.collect()
    gc.freeze()


def zygote_main(sock_fd: int) -> None:
    """Serve fork requests on ``sock_fd`` until the pool closes the socket."""
    sock = socket.socket(fileno=sock_fd)
    try:
        _warm_up()
    except Exception as exc:  # noqa: BLE001 - report why startup failed, then exit
        sys.stderr.write(f"verl_agrae.reward.worker: warm-up failed: {exc!r}\n")
        sys.exit(2)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped automatically; the pool kills them by pidfd
    try:
        sock.sendall(READY)
    except OSError:
        # The pool closed before we were ready (no item needed a symbolic check): nothing to serve, and nothing
        # to report (a BrokenPipeError traceback here used to end `verl-agrae eval grade` runs).
        sock.close()
        return
    my_pid = os.getpid()
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 2)
        except OSError:
            break
        if not msg:
            break  # pool closed the socket
        if msg != FORK or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            break
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _worker_loop(fds[0], fds[1], my_pid)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)
        try:
            sock.sendall(struct.pack(PID_FORMAT, pid))
        except OSError:
            break
    sock.close()
