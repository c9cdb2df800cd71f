"""Ctrl-C stops a training run promptly, leaves no Ray processes behind, and the same command resumes.

The run is a real subprocess of our entry point (as a user starts it); SIGINT is what the terminal sends.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from verl_agrae.testing.tiny_run import tiny_run_argv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(arithmetic_data):
    return arithmetic_data(n_train=64, n_val=8)


def _steps(run_dir: Path) -> set[int]:
    path = run_dir / "attempts" / "attempt-01" / "metrics.jsonl"
    if not path.is_file():
        return set()
    return {json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()}


def _still_running(pids: list[int], seconds: float) -> list[int]:
    """The processes of ``pids`` that have not exited within ``seconds`` (a zombie has exited).

    Waits on a pidfd per process, readable the moment it exits, so a loaded machine only makes this slower
    instead of failing a fixed grace period.
    """
    deadline = time.monotonic() + seconds
    alive = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # exited and reaped
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                alive.append(pid)
        finally:
            os.close(fd)
    return alive


def _check_merged_metrics(run_dir: Path, last_step: int) -> None:
    """The run's merged metrics hold every step once: redone steps replace the lost attempt's rows."""
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if s > 0]
    assert len(trained) == len(set(trained)), steps
    assert set(range(1, last_step + 1)) <= set(trained), steps


def test_ctrl_c_stops_the_run_and_the_same_command_resumes(tiny_model_dir, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    argv = tiny_run_argv("cpu", tiny_model_dir, data_dir, run_dir, "trainer.save_freq=1", steps=30)
    log = tmp_path / "driver.log"  # a file, not a pipe: verl's output would fill a pipe nobody reads yet
    proc = subprocess.Popen(
        [sys.executable, "-m", "verl_agrae.trainer.main", *argv],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: Ctrl-C in a terminal signals the whole foreground group
    )
    try:
        deadline = time.monotonic() + 600
        while not ({1, 2} <= _steps(run_dir)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert {1, 2} <= _steps(run_dir), "no step finished within 10 minutes"
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGINT)
        started = time.monotonic()
        proc.wait(timeout=120)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted; rerun the same command to resume" in output
    assert stopped_in < 120
    alive = _still_running(children, seconds=120)  # Ray's daemons exit asynchronously after shutdown
    assert not alive, f"processes of the interrupted run still alive: {alive}"

    # The same command resumes after the last checkpoint; no step is trained twice.
    done = max(_steps(run_dir))
    checkpoints = sorted(int(p.name.split("_")[-1]) for p in (run_dir / "checkpoints").glob("global_step_*"))
    assert checkpoints and checkpoints[-1] <= done
    from verl_agrae.trainer.main import main

    resume = tiny_run_argv("cpu", tiny_model_dir, data_dir, run_dir, "trainer.save_freq=1", steps=checkpoints[-1] + 1)
    assert main(resume) == 0
    attempt2 = run_dir / "attempts" / "attempt-02"
    assert json.loads((attempt2 / "attempt.json").read_text())["start_step"] == checkpoints[-1] + 1
    steps2 = {json.loads(line)["step"] for line in (attempt2 / "metrics.jsonl").read_text().splitlines()}
    assert min(s for s in steps2 if s > 0) == checkpoints[-1] + 1
    _check_merged_metrics(run_dir, checkpoints[-1] + 1)


def _ray_actor_pids(title: str) -> list[int]:
    """PIDs of Ray worker processes whose title names the actor class (``ray::HFRolloutServer...``)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(f"ray::{title}"):
            pids.append(p.pid)
    return pids


@pytest.mark.parametrize(
    ("title", "role"),
    [
        ("HFRolloutServer", "rollout server (`hf` backend) [HFRolloutServer]"),
        ("WorkerDict", "actor/rollout/reference worker (FSDP)"),
    ],
)
def test_a_dying_worker_stops_the_run_naming_its_role_and_resume_loses_nothing(
    tiny_model_dir, data_dir, tmp_path, title, role
):
    run_dir = tmp_path / "run"
    argv = tiny_run_argv("cpu", tiny_model_dir, data_dir, run_dir, "trainer.save_freq=1", steps=30)
    log = tmp_path / "driver.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "verl_agrae.trainer.main", *argv],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not ({1, 2} <= _steps(run_dir)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert proc.poll() is None and {1, 2} <= _steps(run_dir)
        mine = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        victims = [pid for pid in _ray_actor_pids(title) if pid in mine]
        assert victims, f"no ray::{title} process under the driver"
        os.kill(victims[0], signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 1, output[-3000:]
    assert f"error: the {role}" in output, output[-3000:]
    assert "rerun the same command to resume" in output

    checkpoints = sorted(int(p.name.split("_")[-1]) for p in (run_dir / "checkpoints").glob("global_step_*"))
    from verl_agrae.trainer.main import main

    resume = tiny_run_argv("cpu", tiny_model_dir, data_dir, run_dir, "trainer.save_freq=1", steps=checkpoints[-1] + 1)
    assert main(resume) == 0
    attempt2 = run_dir / "attempts" / "attempt-02"
    assert json.loads((attempt2 / "attempt.json").read_text())["start_step"] == checkpoints[-1] + 1
    _check_merged_metrics(run_dir, checkpoints[-1] + 1)


def test_stop_request_saves_the_step_and_the_same_command_resumes_without_revalidating(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    """verl's real trainer: a stop request (the file slurm/train.sbatch creates on SLURM's time-limit signal) makes
    the run checkpoint the step it is in, log it, and exit 75; the same command then resumes after that step and
    skips the validation before training, which would only re-validate the checkpoint."""
    from verl_agrae.trainer import stop_request
    from verl_agrae.trainer.main import main

    run_dir = tmp_path / "run"
    stop_file = tmp_path / "stop-request"
    monkeypatch.setenv(stop_request.STOP_FILE_ENV, str(stop_file))
    # No periodic checkpoints: whatever is saved, the request saved. Validation before training is on.
    argv = tiny_run_argv("cpu", tiny_model_dir, data_dir, run_dir, "trainer.val_before_train=True", steps=3)
    stop_file.write_text("requested before the first step ends\n")
    assert main(argv) == stop_request.STOPPED_EXIT_CODE
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("global_step_*"))
    assert checkpoints == ["global_step_1"]
    assert stop_request.acknowledged_step(stop_file) == 1
    assert _steps(run_dir) == {0, 1}  # validation before training (step 0), then the one step, logged

    stop_file.unlink()
    assert main(argv) == 0
    attempt2 = run_dir / "attempts" / "attempt-02"
    assert json.loads((attempt2 / "attempt.json").read_text())["start_step"] == 2
    rows = [json.loads(line) for line in (attempt2 / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == [2, 3]  # no validation row before training: it was skipped on resume
    assert not any(k.startswith("val-") for r in rows for k in r["data"])
    assert stop_request.acknowledged_step(stop_file) is None  # the first attempt's acknowledgement was cleared
    _check_merged_metrics(run_dir, 3)
