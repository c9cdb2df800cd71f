"""What ``verl-agrae train`` shows while verl trains: a progress bar and one short line per step.

Everything the process and its Ray workers write (verl's metric line of ~4,000 characters per step, library
warnings, worker logs Ray forwards to the driver) goes to ``<run dir>/train.log``: for the duration of the run,
file descriptors 1 and 2 point into a pipe, and a thread copies the pipe to the log (and, with ``--verbose``, to
the terminal as well). The terminal gets what a user watches a run for, read from the metrics verl's file logger
writes (``metrics.jsonl`` of the attempt), one line per step::

    step   3/8  score 0.438  success 0.438  mu 0.41  suppression 0.41  response 21.4 tok  41.2 s

plus validation results as they arrive. The bar and the step lines go to the terminal's own descriptor, saved
before the redirection.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["STEP_FIELDS", "step_line", "training_console", "validation_line"]

#: (label, metric keys tried in order, format) of the per-step line.
STEP_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("score", ("critic/score/mean",), "{:.3f}"),
    ("success", ("agrae/mu_batch",), "{:.3f}"),
    ("mu", ("agrae/mu",), "{:.2f}"),
    ("suppression", ("agrae/suppression",), "{:.2f}"),
    ("response", ("response_length/mean",), "{:.1f} tok"),
    ("", ("timing_s/step",), "{:.1f} s"),
)


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((row[k] for k in keys if isinstance(row.get(k), (int, float))), None)


def step_line(row: dict[str, Any], total: int | None) -> str | None:
    """The console line of one metrics row, or None when the row is not a training step (validation only)."""
    if "timing_s/step" not in row and "critic/score/mean" not in row:
        return None
    parts = [f"step {int(row['step']):>3}" + (f"/{total}" if total else "")]
    for label, keys, fmt in STEP_FIELDS:
        value = _first(row, keys)
        if value is not None:
            parts.append((f"{label} " if label else "") + fmt.format(float(value)))
    return "  ".join(parts)


def validation_line(row: dict[str, Any]) -> str | None:
    """``validation at step N: <metric> X`` for each core validation metric in a row, or None."""
    keys = sorted(k for k in row if k.startswith("val-core/") and isinstance(row[k], (int, float)))
    if not keys:
        return None
    return f"validation at step {int(row['step'])}: " + ", ".join(
        f"{k.removeprefix('val-core/')} {row[k]:.3f}" for k in keys
    )


class _Tee(threading.Thread):
    """Copies everything written to the pipe to the log (and the terminal with ``verbose``)."""

    def __init__(self, read_fd: int, log: IO[bytes], terminal_fd: int | None) -> None:
        super().__init__(name="train-log", daemon=True)
        self.read_fd, self.log, self.terminal_fd = read_fd, log, terminal_fd

    def run(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            self.log.write(chunk)
            self.log.flush()
            if self.terminal_fd is not None:
                os.write(self.terminal_fd, chunk)


class _StepWatcher(threading.Thread):
    """Prints a line per new step of ``metrics.jsonl`` and advances the bar; stops when ``done`` is set."""

    def __init__(self, metrics: Path, out: IO[str], total: int | None, first_step: int, done: threading.Event) -> None:
        super().__init__(name="train-console", daemon=True)
        self.metrics, self.out, self.total, self.done = metrics, out, total, done
        self.offset = 0
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=first_step - 1, desc="training", unit="step", file=out, dynamic_ncols=True)

    def _new_rows(self) -> list[dict[str, Any]]:
        try:
            with open(self.metrics, encoding="utf-8") as f:
                f.seek(self.offset)
                text = f.read()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
        self.offset += len(complete.encode("utf-8"))
        rows = []
        for line in complete.splitlines():
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append({"step": raw.get("step", 0), **raw.get("data", {})})
        return rows

    def poll(self) -> None:
        for row in self._new_rows():
            line = step_line(row, self.total)
            if line is not None:
                self.bar.update(1)
                self.bar.write(line, file=self.out)
            val = validation_line(row)
            if val is not None:
                self.bar.write(val, file=self.out)

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.poll()
        self.poll()
        self.bar.close()


@contextmanager
def training_console(
    log_path: Path, metrics_path: Path, *, total_steps: int | None, first_step: int = 1, verbose: bool = False
) -> Iterator[IO[str]]:
    """Route the process's output to ``log_path`` and show per-step lines from ``metrics_path`` meanwhile.

    Args:
        log_path: ``train.log`` (appended: a resumed run adds to it).
        metrics_path: the attempt's ``metrics.jsonl`` (verl's file logger).
        total_steps: for the bar and the ``k/N`` counter (None: unknown).
        first_step: the step this attempt starts at (a resume starts past 1).
        verbose: also copy everything to the terminal, as without this console.

    Yields:
        A text stream on the terminal, for lines that must be seen during the run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(sys.__stdout__.fileno() if sys.__stdout__ else 1), "w", buffering=1)
    saved = [os.dup(1), os.dup(2)]
    read_fd, write_fd = os.pipe()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - closed below, after the tee drained the pipe
    tee = _Tee(read_fd, log, terminal.fileno() if verbose else None)
    tee.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    done = threading.Event()
    watcher = None if verbose else _StepWatcher(metrics_path, terminal, total_steps, first_step, done)
    if watcher is not None:
        watcher.start()
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)  # our last write ends of the pipe: the tee reads EOF once no child holds one
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        # A process started during the run (a Ray daemon still shutting down) may hold the pipe a little longer;
        # the tee is a daemon thread and keeps logging what it sends until then.
        tee.join(timeout=5)
        if not tee.is_alive():
            log.close()
            os.close(read_fd)
        done.set()
        if watcher is not None:
            watcher.join(timeout=30)
        terminal.close()
