"""Ctrl-C, a dying worker and a stop request each end a training run cleanly, and the same command resumes.

Each attempt is a real subprocess of our entry point (as a user starts it); SIGINT is what the terminal sends, SIGKILL
what the kernel's OOM killer sends, the stop file what slurm/train.sbatch writes on SLURM's time-limit warning.
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


def _trained(attempt: Path) -> list[int]:
    """Steps an attempt logged (``metrics.jsonl``), in order; 0 is the validation before training."""
    path = attempt / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


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


def _ray_actor_pids(title: str) -> list[int]:
    """PIDs of Ray worker processes whose title names the actor class (``ray::HFRolloutServer...``)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(f"ray::{title}"):
            pids.append(p.pid)
    return pids


def _latest_checkpoint(run_dir: Path) -> int:
    """verl's marker of the newest complete checkpoint (a killed run may leave a partial step directory)."""
    return int((run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip())


class _Attempt:
    """One attempt of the run: the training command as a user starts it, in a subprocess with its own log."""

    def __init__(self, run_dir: Path, number: int, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.dir = run_dir / "attempts" / f"attempt-{number:02d}"
        self.log = run_dir.parent / f"driver-{number}.log"  # a file: verl's output would fill an unread pipe
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "verl_agrae.trainer.main", *argv],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C in a terminal signals the whole foreground group
        )

    def wait_for_trained_steps(self, count: int, timeout: float = 600) -> None:
        """Until the attempt has logged ``count`` trained steps (it must still be running)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if len([s for s in _trained(self.dir) if s > 0]) >= count:
                return
            time.sleep(1)
        raise AssertionError(f"{self.dir.name}: {count} trained steps not seen while running\n{self.output()[-3000:]}")

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text()

    def start_step(self) -> int:
        return json.loads((self.dir / "attempt.json").read_text())["start_step"]


def test_interruptions_stop_the_run_and_the_same_command_resumes_without_losing_or_redoing_steps(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    """One run directory through five attempts of the same command on verl's real trainer, each ended differently:

    1. Ctrl-C (SIGINT to the process group): exit 130 promptly, no process of the run left alive;
    2. the `hf` rollout server's process killed: exit 1, the error names the rollout server;
    3. the FSDP worker's process killed: exit 1, the error names the actor/rollout/reference policy worker (verl's
       fused layout: one process);
    4. a stop request (the file slurm/train.sbatch creates on SLURM's time-limit warning) with no periodic
       checkpoints: the step in progress is saved and logged, exit 75;
    5. runs to the end.

    Every resumed attempt starts right after the newest checkpoint and skips the validation before training (it
    would only re-validate the checkpoint); the merged metrics hold every step once.
    """
    from verl_agrae.trainer import stop_request
    from verl_agrae.trainer.main import main

    run_dir = tmp_path / "run"

    def argv(*extra: str, steps: int = 30) -> list[str]:
        return tiny_run_argv(
            "cpu", tiny_model_dir, data_dir, run_dir, "trainer.save_freq=1", "trainer.val_before_train=True", *extra,
            steps=steps,
        )  # fmt: skip

    def check_resumed(attempt: _Attempt, newest: int) -> None:
        assert attempt.start_step() == newest + 1
        assert 0 not in _trained(attempt.dir), "a resumed attempt validated before training"

    # 1. Ctrl-C
    first = _Attempt(run_dir, 1, argv())
    first.wait_for_trained_steps(2)
    assert _trained(first.dir)[0] == 0  # the first attempt validated before training
    children = [c.pid for c in psutil.Process(first.proc.pid).children(recursive=True)]
    os.killpg(first.proc.pid, signal.SIGINT)
    assert first.finish(timeout=120) == 130, first.output()[-3000:]
    assert "interrupted; rerun the same command to resume" in first.output()
    alive = _still_running(children, seconds=120)  # Ray's daemons exit asynchronously after shutdown
    assert not alive, f"processes of the interrupted run still alive: {alive}"

    # 2.-3. A worker process dies: the error names its role.
    for number, (title, role) in enumerate(
        [
            ("HFRolloutServer", "rollout server (`hf` backend) [HFRolloutServer]"),
            ("WorkerDict", "actor/rollout/reference policy worker (FSDP)"),
        ],
        start=2,
    ):
        newest = _latest_checkpoint(run_dir)
        attempt = _Attempt(run_dir, number, argv())
        attempt.wait_for_trained_steps(1)
        check_resumed(attempt, newest)
        mine = {c.pid for c in psutil.Process(attempt.proc.pid).children(recursive=True)}
        victims = [pid for pid in _ray_actor_pids(title) if pid in mine]
        assert victims, f"no ray::{title} process under the driver"
        os.kill(victims[0], signal.SIGKILL)
        assert attempt.finish(timeout=300) == 1, attempt.output()[-3000:]
        assert f"error: the {role}" in attempt.output(), attempt.output()[-3000:]
        assert "rerun the same command to resume" in attempt.output()

    # 4. A stop request, present before the attempt's first step ends, no periodic checkpoints: that step is saved.
    stop_file = tmp_path / "stop-request"
    stop_file.write_text("time limit near\n")
    newest = _latest_checkpoint(run_dir)
    stopped = _Attempt(run_dir, 4, argv("trainer.save_freq=-1"), {stop_request.STOP_FILE_ENV: str(stop_file)})
    assert stopped.finish(timeout=600) == stop_request.STOPPED_EXIT_CODE, stopped.output()[-3000:]
    check_resumed(stopped, newest)
    assert _trained(stopped.dir) == [newest + 1]  # the step in progress, logged
    assert _latest_checkpoint(run_dir) == newest + 1
    assert (run_dir / "checkpoints" / f"global_step_{newest + 1}").is_dir()
    assert stop_request.acknowledged_step(stop_file) == newest + 1
    stop_file.unlink()

    # 5. To the end, in this process, with the stop file variable still set (as SLURM's restart has it).
    monkeypatch.setenv(stop_request.STOP_FILE_ENV, str(stop_file))
    last = _latest_checkpoint(run_dir) + 1
    assert main(argv(steps=last)) == 0
    final = run_dir / "attempts" / "attempt-05"
    assert json.loads((final / "attempt.json").read_text())["start_step"] == last
    assert _trained(final) == [last]  # no validation before training, one step
    assert stop_request.acknowledged_step(stop_file) is None  # the stopped attempt's acknowledgement was cleared
    _check_merged_metrics(run_dir, last)
