"""The SLURM scripts against stub srun/scontrol/sbatch/ray/verl-agrae that record their calls.

What the stubs can check: the commands and arguments (head/workers, addresses, ports, overrides), their
order (join before doctor before the job proper), the timeout, the cleanup of our own processes, requeue
resumption from a checkpoint left by a previous attempt, and environment propagation to `ray start`.
What they cannot: a real Ray cluster across hosts, real SLURM signal delivery and requeue, GPUs.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "tests" / "stubs"
SLURM = ROOT / "slurm"
JOB_ID = 4242
# Only turns a hang into a failure (the waits below end on events): generous for a busy 2-core machine.
WAIT_S = 60.0


def _block(job_id: int) -> tuple[int, int]:
    """Port block documented in docs/slurm.md: 20000 + (job id mod 88) * 512, 512 ports."""
    base = 20000 + (job_id % 88) * 512
    return base, base + 511


def _env(state: Path, nodes: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AGRAE_", "STUB_", "RAY_"))}
    env.update(
        PATH=f"{STUBS}:{env['PATH']}",
        STUB_STATE=str(state),
        SLURM_JOB_ID=str(JOB_ID),
        SLURM_JOB_NODELIST=f"gpu[1-{nodes}]" if nodes > 1 else "gpu1",
        SLURM_JOB_NAME="exp-math",
        SLURM_SUBMIT_DIR=str(state),
        SLURM_GPUS_ON_NODE="8",
        SLURM_CPUS_PER_TASK="32",
        AGRAE_RAY_POLL_INTERVAL="0.1",
        AGRAE_RAY_JOIN_TIMEOUT="20",
        AGRAE_CLEANUP_GRACE="5",
    )
    env.update(extra)
    return env


def _run(script: str, args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SLURM / script), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _calls(state: Path) -> list[str]:
    path = state / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


def _assert_no_stub_left(state: Path) -> None:
    """Every fake `ray start --block` our job launched has exited (each stub records its pid while it runs).

    Waits on a pidfd per recorded pid, which becomes readable the moment that process exits (a zombie has), so a
    slow machine only makes this wait longer, up to ``WAIT_S``, instead of failing at a fixed short deadline.
    """
    pids = state / "pids"
    deadline = time.monotonic() + WAIT_S
    alive = []
    for f in sorted(pids.iterdir()) if pids.exists() else []:
        try:
            fd = os.pidfd_open(int(f.name))
        except ProcessLookupError:
            continue  # gone (a stub killed with SIGKILL cannot remove its file)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                alive.append(int(f.name))
        finally:
            os.close(fd)
    assert not alive, f"ray stubs still running: {alive}"


def _flag(call: str, name: str) -> str:
    m = re.search(rf"--{name}=(\S+)", call)
    assert m, f"--{name} missing in {call}"
    return m.group(1)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_bootstrap_starts_head_and_workers_then_trains_and_cleans_up(tmp_path, nodes):
    # Workers join 1.5 s after they start while `ray status` is polled every 0.1 s: several polls must see the
    # cluster incomplete even when a loaded machine makes each poll (a few forks) take a few hundred ms.
    env = _env(tmp_path, nodes, STUB_JOIN_DELAY="1.5")
    res = _run("train.sbatch", ["agrae", "data.train_files=/d/train.parquet"], env)
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    starts = [c for c in calls if c.startswith("ray start ")]
    heads = [c for c in starts if " --head" in c]
    workers = [c for c in starts if " --head" not in c]
    base, top = _block(JOB_ID)
    # One head, on the first node, listening on the job's GCS port.
    assert len(heads) == 1 and heads[0].startswith("ray start node=gpu1 ")
    assert _flag(heads[0], "port") == str(base)
    assert _flag(heads[0], "node-ip-address") == "ip-of-gpu1"  # first address field only
    # N-1 workers, one per other node, all pointing at the head.
    assert sorted(c.split()[2] for c in workers) == [f"node=gpu{i}" for i in range(2, nodes + 1)]
    for c in starts:
        node = c.split()[2].removeprefix("node=")
        assert _flag(c, "node-ip-address") == f"ip-of-{node}"
        assert _flag(c, "num-gpus") == "8" and _flag(c, "num-cpus") == "32"
        assert " --block" in c
        ports = [int(_flag(c, k)) for k in ("node-manager-port", "object-manager-port", "min-worker-port")]
        ports.append(int(_flag(c, "max-worker-port")))
        assert all(base <= p <= top for p in ports)
        assert _flag(c, "temp-dir").endswith(f"/ray-{JOB_ID}")
    for c in workers:
        assert _flag(c, "address") == f"ip-of-gpu1:{base}"
    # Each Ray step asks for the job's CPUs and GPUs on its node (a step no longer inherits --cpus-per-task).
    steps = [c for c in calls if c.startswith("srun ") and " ray start " in c]
    assert len(steps) == nodes
    assert all(" --cpus-per-task=32 --gpus-per-node=8 " in c for c in steps), steps
    # It waited for the joins (several status polls when workers are slow), then doctor, then training.
    i_last_start = max(i for i, c in enumerate(calls) if c.startswith("ray start "))
    i_doctor = next(i for i, c in enumerate(calls) if c.startswith("verl-agrae") and " doctor" in c)
    i_train = next(i for i, c in enumerate(calls) if c.startswith("verl-agrae") and " train " in c)
    assert i_last_start < i_doctor < i_train
    if nodes > 1:
        assert sum(c.startswith("ray status") for c in calls[i_last_start:i_doctor]) >= 2
    assert f"ray cluster ready: {nodes} node(s), {8 * nodes} GPU(s)" in res.stderr
    assert calls[i_doctor].endswith(f"doctor --address ip-of-gpu1:{base}")
    train = calls[i_train]
    assert f"RAY_ADDRESS=ip-of-gpu1:{base} " in train
    # One per-job token, in token mode, for every node, every status poll, the doctor and the driver.
    auths = {
        re.search(r" auth=(\S+)", c).group(1) for c in calls if c.startswith(("ray start", "ray status", "verl-agrae"))
    }
    (auth,) = auths
    assert auth.startswith("token:") and auth != "token:d41d8cd9"  # md5 of the empty token
    assert "train --config-name agrae " in train
    assert f"trainer.nnodes={nodes} trainer.n_gpus_per_node=8 trainer.resume_mode=auto" in train
    assert f"run.dir={tmp_path}/runs/exp-math data.train_files=/d/train.parquet" in train
    # Cleanup stopped exactly our nodes, without `ray stop` (which would kill other jobs' clusters).
    assert sorted(c for c in calls if c.startswith("ray stopped")) == sorted(
        f"ray stopped node=gpu{i}" for i in range(1, nodes + 1)
    )
    assert not any(c.startswith("ray stop ") for c in calls)
    _assert_no_stub_left(tmp_path)


def test_jobs_sharing_nodes_get_disjoint_ports(tmp_path):
    blocks = []
    for job in (4242, 4243):
        state = tmp_path / str(job)
        state.mkdir()
        res = _run("train.sbatch", ["agrae"], _env(state, 2, SLURM_JOB_ID=str(job)))
        assert res.returncode == 0, res.stderr
        ports = set()
        for c in _calls(state):
            if c.startswith("ray start "):
                lo, hi = int(_flag(c, "min-worker-port")), int(_flag(c, "max-worker-port"))
                ports |= set(range(lo, hi + 1))
                ports |= {int(v) for v in re.findall(r"-port=(\d+)", c)}
        blocks.append(ports)
    assert blocks[0] and blocks[1] and not blocks[0] & blocks[1]


def test_auth_token_is_per_job_and_can_be_disabled_or_inherited(tmp_path):
    def auths(state: Path) -> set[str]:
        return {
            re.search(r" auth=(\S+)", c).group(1)
            for c in _calls(state)
            if c.startswith(("ray start", "ray status", "verl-agrae"))
        }

    seen = []
    for name, extra in [
        ("a", {}),
        ("b", {}),
        ("off", {"AGRAE_RAY_AUTH": "disabled"}),
        ("mine", {"AGRAE_RAY_AUTH": "inherit", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "abc"}),
    ]:
        state = tmp_path / name
        state.mkdir()
        res = _run("train.sbatch", ["agrae"], _env(state, 2, **extra))
        assert res.returncode == 0, res.stderr
        (auth,) = auths(state)
        seen.append(auth)
    assert seen[0] != seen[1] and seen[0].startswith("token:") and seen[1].startswith("token:")
    assert seen[2].startswith("disabled:")
    assert seen[3] == "token:" + __import__("hashlib").md5(b"abc").hexdigest()[:8]


def test_node_that_never_joins_fails_clearly_and_cleans_up(tmp_path):
    env = _env(tmp_path, 4, STUB_NEVER_JOIN="gpu3", AGRAE_RAY_JOIN_TIMEOUT="2")
    t0 = time.monotonic()
    res = _run("train.sbatch", ["agrae"], env)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 30
    assert "ray cluster incomplete after 2s: 3/4 node(s), 24/32 GPU(s) joined" in res.stderr
    assert "gpu1 gpu2 gpu3 gpu4" in res.stderr
    calls = _calls(tmp_path)
    assert not any(c.startswith("verl-agrae") for c in calls), "nothing may run on an incomplete cluster"
    assert {c for c in calls if c.startswith("ray stopped")} == {f"ray stopped node=gpu{i}" for i in range(1, 5)}
    _assert_no_stub_left(tmp_path)


def test_worker_that_exits_is_named(tmp_path):
    res = _run("train.sbatch", ["agrae"], _env(tmp_path, 3, STUB_FAIL_NODE="gpu2"))
    assert res.returncode != 0
    assert "ray start on gpu2 exited (status 1) before the cluster was complete (attempt 3)" in res.stderr
    assert sum(c == "ray failed node=gpu2" for c in _calls(tmp_path)) == 3  # tried three times (the default)
    assert not any(c.startswith("verl-agrae") for c in _calls(tmp_path))
    _assert_no_stub_left(tmp_path)


@pytest.mark.parametrize("node", ["gpu1", "gpu2"])
def test_a_ray_start_that_fails_once_is_started_again(tmp_path, node):
    """Ray's raylet exits when its dashboard agent takes over 15 s to start (a busy node): the node is started again."""
    res = _run("train.sbatch", ["agrae"], _env(tmp_path, 3, STUB_FAIL_ONCE_NODE=node))
    assert res.returncode == 0, res.stderr
    assert f"ray start on {node} exited (status 1); starting it again (attempt 2 of 3)" in res.stderr
    assert "ray cluster ready: 3 node(s), 24 GPU(s)" in res.stderr
    starts = [c for c in _calls(tmp_path) if c.startswith(f"ray start node={node} ")]
    assert len(starts) == 2 and starts[0] == starts[1]  # the same command again
    _assert_no_stub_left(tmp_path)


def test_requeued_job_resumes_from_latest_checkpoint(tmp_path):
    # First attempt: training saves step 5 and is then preempted (non-zero exit).
    first = _run("train.sbatch", ["agrae"], _env(tmp_path, 2, STUB_TRAIN_SAVE_STEP="5", STUB_TRAIN_RC="143"))
    assert first.returncode == 143
    assert "restart 0: no checkpoint" in first.stderr
    # SLURM requeues the same job id with SLURM_RESTART_COUNT=1.
    second = _run("train.sbatch", ["agrae"], _env(tmp_path, 2, SLURM_RESTART_COUNT="1"))
    assert second.returncode == 0, second.stderr
    run_dir = tmp_path / "runs" / "exp-math"
    assert f"restart 1: resuming from {run_dir}/checkpoints/global_step_5" in second.stderr
    trains = [c for c in _calls(tmp_path) if c.startswith("verl-agrae") and " train " in c]
    assert len(trains) == 2
    for c in trains:  # same run directory (hence checkpoints) and resume_mode=auto in both attempts
        assert f"run.dir={run_dir}" in c and "trainer.resume_mode=auto" in c


def test_user_overrides_win_and_yaml_configs(tmp_path):
    cfg = tmp_path / "my_exp.yaml"
    cfg.write_text("defaults: [agrae, _self_]\n")
    res = _run("train.sbatch", [str(cfg), "trainer.resume_mode=disable", "run.dir=/elsewhere"], _env(tmp_path, 1))
    assert res.returncode == 0, res.stderr
    (train,) = [c for c in _calls(tmp_path) if " train " in c]
    assert f"train --config-dir {tmp_path} --config-name my_exp " in train
    assert train.count("resume_mode") == 1 and "trainer.resume_mode=disable" in train
    assert train.count("run.dir") == 1 and "run.dir=/elsewhere" in train


def _start_and_wait_for_training(tmp_path, **extra):
    env = _env(tmp_path, 2, STUB_TRAIN_SLEEP="60", **extra)
    proc = subprocess.Popen(
        ["bash", str(SLURM / "train.sbatch"), "agrae"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Ready once the fake `verl-agrae train` sleeps in its loop: it installs its TERM trap just before, so a signal
    # sent now is recorded by the trap ("got TERM"). Its call in calls.log comes before the trap, so it is not enough.
    # The stub exposes no event for this; its `sleep` child is the observable state, polled up to a generous limit.
    deadline = time.monotonic() + WAIT_S
    while not (any(" train " in c for c in _calls(tmp_path)) and _training_stub_sleeping(proc.pid)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def _training_stub_sleeping(pid: int) -> bool:
    """Whether a `sleep` runs as a child of the fake `verl-agrae train` under process ``pid``."""
    return _stub_sleeping(pid, "train")


def _stub_sleeping(pid: int, command: str) -> bool:
    """Whether a `sleep` runs as a child of the fake `verl-agrae COMMAND` under process ``pid``."""
    try:
        tree = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in tree:
        try:
            parent = child.parent()
            if child.name() == "sleep" and parent is not None and "verl-agrae " + command in " ".join(parent.cmdline()):
                return True
        except psutil.Error:
            continue  # a `sleep` that just ended
    return False


def test_preemption_stops_the_job_proper_and_cleans_up(tmp_path):
    proc = _start_and_wait_for_training(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 15
    calls = _calls(tmp_path)
    assert "verl-agrae train got TERM" in calls  # the job proper is stopped, not orphaned
    assert {c for c in calls if c.startswith("ray stopped")} == {"ray stopped node=gpu1", "ray stopped node=gpu2"}
    assert proc.returncode == 143 and "caught SIGTERM" in err
    assert not any(c.startswith("scontrol requeue") for c in calls)
    _assert_no_stub_left(tmp_path)


def test_time_limit_warning_saves_first_then_requeues(tmp_path):
    """USR1 (SLURM's warning before the time limit) asks the trainer to save; the job requeues only after the
    trainer saved and exited, with Ray already stopped (`scontrol requeue` makes SLURM TERM the shell at once)."""
    proc = _start_and_wait_for_training(tmp_path, STUB_STOP_SAVE_STEP="3")
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    calls = _calls(tmp_path)
    assert "verl-agrae train got TERM" not in calls  # not killed: it stopped by itself after saving
    i_stop = calls.index("verl-agrae train stop requested")
    i_requeue = calls.index(f"scontrol requeue {JOB_ID}")
    stopped = [i for i, c in enumerate(calls) if c.startswith("ray stopped")]
    assert len(stopped) == 2 and i_stop < min(stopped) and max(stopped) < i_requeue
    assert "checkpoint step: 0 -> 3 in this attempt; requeueing job 4242" in err
    assert (tmp_path / "runs" / "exp-math" / "stop-request").is_file()  # what the trainer saw
    _assert_no_stub_left(tmp_path)


def test_time_limit_warning_without_progress_ends_the_job(tmp_path):
    """An attempt that saved nothing after the warning is not requeued: the restart would get the warning just as
    early and repeat it until someone cancels the job."""
    proc = _start_and_wait_for_training(tmp_path, STUB_ON_STOP="fail")
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "the trainer exited with status 1 after the time-limit warning" in err
    assert "this attempt made no progress (checkpoint step still 0): not requeueing" in err
    assert not any(c.startswith("scontrol requeue") for c in _calls(tmp_path))
    _assert_no_stub_left(tmp_path)


def test_time_limit_warning_during_set_up_starts_no_training(tmp_path):
    """The warning before training even started (time limit shorter than the warning lead): no attempt, no requeue."""
    env = _env(tmp_path, 2, STUB_JOIN_DELAY="3", AGRAE_RAY_POLL_INTERVAL="0.2")
    proc = subprocess.Popen(
        ["bash", str(SLURM / "train.sbatch"), "agrae"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + WAIT_S
    while not any(c.startswith("ray start node=gpu2") for c in _calls(tmp_path)):  # the job waits for gpu2 to join
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "made no progress (checkpoint step still 0; the warning came before training started): not requeueing" in err
    calls = _calls(tmp_path)
    assert not any(c.startswith("verl-agrae") and " train " in c for c in calls)
    assert not any(c.startswith("scontrol requeue") for c in calls)
    _assert_no_stub_left(tmp_path)


def test_requeue_can_be_turned_off_and_a_stale_request_is_void(tmp_path):
    run_dir = tmp_path / "runs" / "exp-math"
    run_dir.mkdir(parents=True)
    (run_dir / "stop-request").write_text("left by the previous attempt\n")
    res = _run("train.sbatch", ["agrae"], _env(tmp_path, 1, STUB_TRAIN_SLEEP="1"))
    assert res.returncode == 0, res.stderr
    assert "verl-agrae train stop requested" not in _calls(tmp_path)  # removed before training started

    proc = _start_and_wait_for_training(tmp_path, STUB_STOP_SAVE_STEP="2", AGRAE_REQUEUE_ON_USR1="0")
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "AGRAE_REQUEUE_ON_USR1=0: not requeueing" in err
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert not any(c.startswith("scontrol requeue") for c in _calls(tmp_path))
    _assert_no_stub_left(tmp_path)


def test_node_address_is_never_loopback(tmp_path):
    """Debian/Ubuntu map the hostname to 127.0.1.1: the interface address is used instead; no address at all fails."""
    res = _run("train.sbatch", ["agrae"], _env(tmp_path, 2, STUB_LOOPBACK_NODES="gpu1 gpu2"))
    assert res.returncode == 0, res.stderr
    starts = {c.split()[2]: c for c in _calls(tmp_path) if c.startswith("ray start ")}
    assert _flag(starts["node=gpu1"], "node-ip-address") == "10.9.0.1"
    assert _flag(starts["node=gpu2"], "node-ip-address") == "10.9.0.2"
    assert _flag(starts["node=gpu2"], "address").startswith("10.9.0.1:")

    bad = tmp_path / "bad"
    bad.mkdir()
    res = _run("train.sbatch", ["agrae"], _env(bad, 2, STUB_NO_ADDRESS_NODES="gpu2"))
    assert res.returncode == 1
    assert "no address other than loopback on gpu2" in res.stderr
    assert "could not find a usable address of gpu2" in res.stderr
    assert not any(c.startswith("verl-agrae") for c in _calls(bad))
    _assert_no_stub_left(bad)
    loop = tmp_path / "loop"
    loop.mkdir()
    res = _run("train.sbatch", ["agrae"], _env(loop, 2, AGRAE_HEAD_IP="127.0.0.1"))
    assert res.returncode == 1 and "head address 127.0.0.1 is loopback" in res.stderr


def test_cpu_nodes_declare_logical_gpus_to_ray_but_ask_slurm_for_none(tmp_path):
    env = _env(tmp_path, 2, AGRAE_GPUS_PER_NODE="1", AGRAE_CPUS_PER_NODE="16", SLURM_CPUS_PER_TASK="2")
    del env["SLURM_GPUS_ON_NODE"]
    res = _run("train.sbatch", ["agrae"], env)
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    starts = [c for c in calls if c.startswith("ray start ")]
    assert all(_flag(c, "num-gpus") == "1" and _flag(c, "num-cpus") == "16" for c in starts)
    steps = [c for c in calls if c.startswith("srun ") and " ray start " in c]
    assert len(steps) == 2 and all(" --cpus-per-task=2 " in c and "--gpus-per-node" not in c for c in steps)


def test_doctor_failure_stops_the_job_and_can_be_skipped(tmp_path):
    res = _run("train.sbatch", ["agrae"], _env(tmp_path, 2, STUB_DOCTOR_RC="1"))
    assert res.returncode == 1 and "verl-agrae doctor failed (set AGRAE_SKIP_DOCTOR=1 to bypass)" in res.stderr
    assert not any(" train " in c for c in _calls(tmp_path))
    _assert_no_stub_left(tmp_path)
    skip = tmp_path / "skip"
    skip.mkdir()
    res = _run("train.sbatch", ["agrae"], _env(skip, 2, STUB_DOCTOR_RC="1", AGRAE_SKIP_DOCTOR="1"))
    assert res.returncode == 0, res.stderr
    calls = _calls(skip)
    assert not any(" doctor" in c for c in calls) and any(" train " in c for c in calls)


def test_environment_is_exported_before_ray_start(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("export STUB_PROBE=venv-active\n")
    env_file = tmp_path / "site.sh"
    env_file.write_text("export NCCL_SOCKET_IFNAME=ib0\n")
    res = _run("train.sbatch", ["agrae"], _env(tmp_path, 3, AGRAE_VENV=str(venv), AGRAE_ENV_FILE=str(env_file)))
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    starts = [c for c in calls if c.startswith("ray start ")]
    assert len(starts) == 3 and all(" probe=venv-active " in c for c in starts)
    assert all(" probe=venv-active " in c for c in calls if c.startswith("verl-agrae"))


def test_conda_and_modules_activation(tmp_path):
    res = _run("train.sbatch", ["agrae"], _env(tmp_path, 2, AGRAE_CONDA_ENV="agrae", AGRAE_MODULES="cuda/12.4 gcc/12"))
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    assert calls[:3] == ["module load cuda/12.4", "module load gcc/12", "conda activate agrae"]
    assert all(" probe=conda:agrae " in c for c in calls if c.startswith("ray start "))


def test_apptainer_wraps_every_command(tmp_path):
    image = tmp_path / "agrae.sif"
    image.write_text("")
    env = _env(tmp_path, 2, AGRAE_APPTAINER_IMAGE=str(image), AGRAE_VENV="/opt/venv")
    res = _run("train.sbatch", ["agrae"], env)
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    wrapped = [c for c in calls if c.startswith("apptainer ")]
    prefix = f"apptainer PREPEND_PATH=/opt/venv/bin exec --nv {image} "
    assert all(c.startswith(prefix) for c in wrapped)
    kinds = [c.removeprefix(prefix).split()[:2] for c in wrapped]
    assert kinds.count(["ray", "start"]) == 2
    assert ["verl-agrae", "doctor"] in kinds and ["verl-agrae", "train"] in kinds
    # srun launches the container, the container launches ray.
    assert all(f"exec --nv {image} ray start" in c for c in calls if c.startswith("srun ") and "ray start" in c)


def test_missing_nodelist_and_bad_usage(tmp_path):
    env = _env(tmp_path, 1)
    del env["SLURM_JOB_NODELIST"]
    res = _run("train.sbatch", ["agrae"], env)
    assert res.returncode == 1 and "SLURM_JOB_NODELIST is not set" in res.stderr
    res = _run("train.sbatch", [], _env(tmp_path, 1))
    assert res.returncode == 1 and "usage: sbatch" in res.stderr


def test_eval_array_task_runs_its_cell(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("output_dir: out\n")
    res = _run("eval_sweep.sbatch", [str(sweep)], _env(tmp_path, 1, SLURM_ARRAY_TASK_ID="5"))
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    where, cell = [c for c in calls if " eval " in c]
    assert where.endswith(f"eval sweep {sweep} --cell-dir 5") and cell.endswith(f"eval sweep {sweep} --cell 5")
    assert any(" doctor" in c for c in calls)
    _assert_no_stub_left(tmp_path)
    res = _run("eval_sweep.sbatch", [str(sweep)], _env(tmp_path, 1))
    assert res.returncode == 1 and "SLURM_ARRAY_TASK_ID is not set" in res.stderr


@pytest.mark.parametrize(("shards", "requeued"), [(2, True), (0, False)])
def test_eval_task_stops_on_the_time_limit_warning_and_requeues_after_progress(tmp_path, shards, requeued):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("output_dir: out\n")
    env = _env(tmp_path, 1, SLURM_ARRAY_TASK_ID="1", STUB_EVAL_SHARDS=str(shards), STUB_EVAL_SLEEP="60")
    proc = subprocess.Popen(
        ["bash", str(SLURM / "eval_sweep.sbatch"), str(sweep)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while not _stub_sleeping(proc.pid, "eval"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    calls = _calls(tmp_path)
    assert "verl-agrae eval got TERM" in calls  # the cell is stopped (its finished shards stay)
    assert f"cell 1: {tmp_path}/cells/1 (0 finished shard file(s))" in err
    if requeued:
        assert proc.returncode == 0, err
        assert "finished shard files of the cell: 0 -> 2 in this attempt; requeueing" in err
        assert calls[-1] == f"scontrol requeue {JOB_ID}"
    else:
        assert proc.returncode == 1
        assert "made no progress (finished shard files of the cell still 0): not requeueing" in err
        assert not any(c.startswith("scontrol requeue") for c in calls)
    _assert_no_stub_left(tmp_path)


def test_submit_counts_cells_in_the_jobs_environment_when_verl_agrae_is_not_on_path(tmp_path):
    """A login node without verl-agrae: the count comes from the environment the jobs activate (AGRAE_VENV)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for stub in STUBS.iterdir():
        if stub.name != "verl-agrae":
            (bin_dir / stub.name).symlink_to(stub)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "verl-agrae").symlink_to(STUBS / "verl-agrae")
    (venv / "bin" / "activate").write_text(f"export PATH={venv}/bin:$PATH\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("output_dir: out\n")
    env = _env(tmp_path, 1, STUB_NUM_CELLS="4")
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    run = ["bash", str(SLURM / "submit_eval_sweep.sh"), str(sweep)]
    res = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 1 and "verl-agrae is not on PATH and no job environment provides it" in res.stderr
    env["AGRAE_VENV"] = str(venv)
    res = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "submitted 4 cell(s) as array job 1000" in res.stdout
    assert any(c.startswith("sbatch ") and "--array=0-3 " in c for c in _calls(tmp_path))


@pytest.mark.parametrize("script", ["submit_eval_sweep.sh", "submit_compare.sh"])
def test_submit_scripts_refuse_a_missing_argument_or_file_before_submitting(tmp_path, script):
    env = _env(tmp_path, 1)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SLURM / script), *args], env=env, capture_output=True, text=True, timeout=60)

    res = run()
    assert res.returncode == 2 and f"usage: {SLURM / script} " in res.stderr
    missing = tmp_path / "nope.yaml"
    res = run(str(missing))
    assert res.returncode == 1 and f"file not found: {missing}" in res.stderr
    assert not [c for c in _calls(tmp_path) if c.startswith("sbatch ")]


def test_submit_sweep_array_then_dependent_report(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("output_dir: out\n")
    env = _env(tmp_path, 1, STUB_NUM_CELLS="6", AGRAE_ARRAY_LIMIT="2")
    res = subprocess.run(
        ["bash", str(SLURM / "submit_eval_sweep.sh"), str(sweep), "--partition=gpu"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "submitted 6 cell(s) as array job 1000 and the report as job 1001" in res.stdout
    sb = [c for c in _calls(tmp_path) if c.startswith("sbatch ")]
    assert sb == [
        f"sbatch AGRAE_SLURM_DIR={SLURM} --parsable --array=0-5%2 --partition=gpu {SLURM}/eval_sweep.sbatch {sweep}",
        f"sbatch AGRAE_SLURM_DIR={SLURM} --parsable --dependency=afterany:1000 {SLURM}/eval_report.sbatch {sweep}",
    ]
    assert any(c.endswith(f"eval sweep {sweep} --num-cells") for c in _calls(tmp_path))


def test_report_job_runs_report(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("output_dir: out\n")
    res = _run("eval_report.sbatch", [str(sweep)], _env(tmp_path, 1))
    assert res.returncode == 0, res.stderr
    (call,) = [c for c in _calls(tmp_path) if c.startswith("verl-agrae")]
    assert call.endswith(f"eval report {sweep} --allow-missing")
    assert not any(c.startswith(("ray ", "srun ")) for c in _calls(tmp_path))


def test_library_found_from_a_spool_copy(tmp_path):
    # SLURM runs a copy of the batch script from its spool directory: the library must still be found.
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(SLURM / "train.sbatch", spool / "slurm_script")
    env = _env(tmp_path, 1, SLURM_SUBMIT_DIR=str(ROOT))
    env["AGRAE_RUN_ROOT"] = str(tmp_path / "runs")
    cmd = ["bash", str(spool / "slurm_script"), "agrae"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert res.returncode == 0, res.stderr
    env["SLURM_SUBMIT_DIR"] = str(tmp_path)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert res.returncode == 1 and "cannot find slurm/lib/ray_cluster.sh" in res.stderr


@pytest.mark.slow
def test_real_ray_single_node(tmp_path):
    """The library with the real `ray` CLI on this machine (one node; srun/scontrol/hostname still stubs):
    real `ray start` accepts every flag, `ray status` parses, a driver connects with the job's token and sees
    the declared GPUs, and cleanup leaves no Ray process of the job behind."""
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists():
        pytest.skip("ray CLI not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for stub in STUBS.iterdir():
        if stub.name not in ("ray", "verl-agrae"):
            (bin_dir / stub.name).symlink_to(stub)
    # A driver in place of verl-agrae: connect through RAY_ADDRESS and report the cluster's resources.
    driver = bin_dir / "verl-agrae"
    probe = "import json, ray; ray.init(); print('RESOURCES', json.dumps(ray.cluster_resources())); ray.shutdown()"
    driver.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "$1" == doctor ]]; then exit 0; fi\n'
        f'exec {sys.executable} -c "{probe}" >> {tmp_path}/driver.out 2>&1\n'
    )
    driver.chmod(0o755)
    # Short (Ray's unix socket paths must stay under 108 bytes) and unique to this test.
    ray_tmp = Path(tempfile.mkdtemp(prefix="agr", dir="/tmp"))
    env = _env(
        tmp_path, 1,
        PATH=f"{bin_dir}:{ray_cli.parent}:{os.environ['PATH']}",
        SLURM_JOB_ID="31337", AGRAE_HEAD_IP="127.0.0.1", AGRAE_GPUS_PER_NODE="2", AGRAE_CPUS_PER_NODE="2",
        AGRAE_RAY_TMPDIR=str(ray_tmp), AGRAE_RAY_POLL_INTERVAL="1", AGRAE_RAY_JOIN_TIMEOUT="180",
        AGRAE_HEAD_WAIT="180",
    )  # fmt: skip
    try:
        res = _run("train.sbatch", ["agrae"], env, timeout=400)
        out = (tmp_path / "driver.out").read_text() if (tmp_path / "driver.out").exists() else ""
        assert res.returncode == 0, res.stderr[-3000:] + out
        assert "ray cluster ready: 1 node(s), 2 GPU(s)" in res.stderr
        resources = json.loads(out.split("RESOURCES ", 1)[1].splitlines()[0])
        assert resources["GPU"] == 2.0 and resources["CPU"] == 2.0
    finally:
        leftover = _processes_mentioning(str(ray_tmp))
        for pid in leftover:  # only processes of this test's own cluster (its unique temp dir)
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftover, f"Ray processes left after cleanup: {leftover}"


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (this test's unique Ray temp dir)."""
    deadline = time.monotonic() + 15
    while True:
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if text.encode() in (proc / "cmdline").read_bytes():
                        pids.append(int(proc.name))
                except OSError:
                    continue
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.5)
