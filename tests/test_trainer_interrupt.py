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
