"""Save-and-stop requests: a file that asks a running training to checkpoint at the end of its step and stop.

The path is given in ``AGRAE_STOP_FILE``. ``slurm/train.sbatch`` sets it to ``<run dir>/stop-request`` and creates
the file when SLURM announces the time limit (``--signal=B:USR1@N``); anyone can create it by hand to stop a run
cleanly. Our trainer modes (:mod:`verl_agrae.integration.trainers`) look for it after every step: when it exists,
the step just finished is checkpointed (unless verl saved it already), the step's metrics are logged, and the
training loop ends; the trainer writes ``<stop file>.saved`` with that step, and ``verl-agrae train`` then exits
with :data:`STOPPED_EXIT_CODE`. At most the step in progress when the request came is lost, never a finished one.

The request file is left in place (a restart must remove it, as ``train.sbatch`` does at the start of every
attempt); the acknowledgement is removed by ``verl-agrae train`` when it starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["STOPPED_EXIT_CODE", "STOP_FILE_ENV", "acknowledge", "acknowledged_step", "ack_path", "requested"]

#: Environment variable holding the request file's path (read by the driver and by the trainer's process).
STOP_FILE_ENV = "AGRAE_STOP_FILE"
#: Exit status of ``verl-agrae train`` after a honoured request (sysexits' EX_TEMPFAIL: "try again later").
STOPPED_EXIT_CODE = 75


def ack_path(stop_file: str | os.PathLike[str]) -> Path:
    """Where the trainer records the step it saved before stopping."""
    return Path(f"{os.fspath(stop_file)}.saved")


def requested(stop_file: str | os.PathLike[str] | None) -> bool:
    """Whether a stop was requested (``stop_file`` is set and exists)."""
    return bool(stop_file) and Path(stop_file).exists()


def acknowledge(stop_file: str | os.PathLike[str], step: int) -> None:
    """Record that training stopped after saving ``step`` (written atomically: a reader never sees half)."""
    from verl_agrae.atomic import atomic_write_text

    atomic_write_text(ack_path(stop_file), json.dumps({"step": int(step)}) + "\n")


def acknowledged_step(stop_file: str | os.PathLike[str] | None) -> int | None:
    """The step the trainer saved before stopping on request, or None when it did not stop on request."""
    if not stop_file:
        return None
    try:
        return int(json.loads(ack_path(stop_file).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
