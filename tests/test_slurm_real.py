"""slurm/ on a real SLURM cluster: Debian's SLURM 22.05 started on this machine by scripts/slurm_test_cluster.sh
(munge, slurmctld, three slurmd nodes n1-n3, each in its own network namespace on a private bridge, with its own
hostname, /etc/hosts and /tmp). Nothing here is a stub: sbatch, srun, scontrol, SLURM's signals and requeue, Ray
across the nodes, verl's trainer, the eval sweep and `verl-agrae doctor` are the real ones.

Marked ``slurm`` (left out of the default run; `.ci/run` runs them as root). The module starts its own cluster
and stops it at the end, or uses a running one named by ``AGRAE_TEST_SLURM`` (its state directory, as `.ci/run`
does). Job files live under the cluster's state directory, which every node sees (each node's /tmp is private).
Every wait polls SLURM or files for an event with a deadline; the deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm_test_cluster.sh"
SLURM_DIR = ROOT / "slurm"
NODES = 3
# Generous: a verl start-up takes about a minute on 2 idle cores, several when other jobs share them.
JOB_WAIT_S = 900.0


# ---------------------------------------------------------------------------------------------------------
# The cluster and small helpers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    state: Path
    work: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment sbatch passes to jobs: this checkout's scripts and virtual environment, no GPU."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AGRAE_", "RAY_ADDRESS", "STUB_"))}
        env.update(
            SLURM_CONF=str(self.state / "slurm.conf"),
            AGRAE_SLURM_DIR=str(SLURM_DIR),
            AGRAE_VENV=sys.prefix,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            AGRAE_RAY_POLL_INTERVAL="1",
            # verl-agrae, ray and python come from AGRAE_VENV inside the jobs, not from the submitting PATH.
            PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        return env

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120, **kw)

    def node_pids(self, node: str) -> list[int]:
        """Processes in the node's network namespace, its slurmd excluded."""
        slurmd = int((self.state / "pids" / f"slurmd-{node}").read_text())
        out = subprocess.run(["ip", "netns", "pids", f"agsl-{node}"], capture_output=True, text=True, check=True)
        return [int(p) for p in out.stdout.split() if int(p) != slurmd]

    def node_tmp(self, node: str) -> Path:
        """The node's private /tmp, as seen from this machine."""
        return self.state / "nodes" / node / "tmp"


def _cluster_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a real SLURM cluster needs root (network namespaces, munge, slurmd); run `pytest -m slurm` as root"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it (Debian/Ubuntu: slurm-wlm, munge)"
    return None


@pytest.fixture(scope="module")
def cluster(tiny_model_dir):
    reason = _cluster_unavailable()
    if reason:
        pytest.skip(reason)
    given = os.environ.get("AGRAE_TEST_SLURM")
    state = Path(given) if given else Path("/run/agrae-slurm-pytest")
    if not given:
        up = subprocess.run(
            [str(CLUSTER_SCRIPT), "up", str(NODES), str(state)], capture_output=True, text=True, timeout=900
        )
        assert up.returncode == 0, up.stdout + up.stderr
    work = state / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # The tiny model and data where every node can read them.
    shutil.copytree(tiny_model_dir, work / "model")
    from verl_agrae.data.arithmetic import write_arithmetic_dataset

    write_arithmetic_dataset(work / "data", n_train=64, n_val=8, seed=0)
    try:
        yield Cluster(state, work)
    finally:
        if not given:
            down = subprocess.run(
                [str(CLUSTER_SCRIPT), "down", str(state)], capture_output=True, text=True, timeout=300
            )
            assert down.returncode == 0, down.stdout + down.stderr


def _wait(predicate: Callable[[], object], what: str, timeout: float = JOB_WAIT_S, interval: float = 0.5) -> object:
    """Poll ``predicate`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)


def _sbatch(cluster: Cluster, cwd: Path, *args: str, **env: str) -> int:
    res = subprocess.run(
        ["sbatch", "--parsable", *args], env={**cluster.env, **env}, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip().split(";")[0])


def _job(cluster: Cluster, job_id: int | str) -> dict[str, str]:
    """``scontrol show job`` as a dict (records stay for MinJobAge=3600 s after the job ends)."""
    res = cluster.run("scontrol", "show", "job", "-o", str(job_id))
    assert res.returncode == 0, res.stderr
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


_ACTIVE = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED")


def _wait_while_running(cluster: Cluster, job_id: int, log: Path, predicate: Callable[[], object], what: str):
    """:func:`_wait` that fails at once, with the job's log, if the job ends first."""

    def check():
        value = predicate()
        if not value:
            state = _job(cluster, job_id)["JobState"]
            assert state in _ACTIVE, f"job {job_id} ended ({state}) before {what}:\n{_log(log)[-4000:]}"
        return value

    return _wait(check, what)


def _ended(cluster: Cluster, job_id: int) -> dict[str, str]:
    """Wait until the job has ended (not pending, running, completing or requeued); returns its record."""
    return _wait(
        lambda: (
            (j := _job(cluster, job_id))["JobState"]
            not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED")
            and j
        ),
        f"job {job_id} to end",
    )


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _assert_nodes_idle(cluster: Cluster, nodes: list[str], timeout: float = 120.0) -> None:
    """Nothing of a job is left on these nodes: no process in their namespaces but slurmd. Waits (up to ``timeout``)
    for slurmstepd and the job's processes to finish exiting, then names what is still there."""
    deadline = time.monotonic() + timeout
    while True:
        left = {n: pids for n in nodes if (pids := cluster.node_pids(n))}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    detail = {
        n: [Path(f"/proc/{p}/cmdline").read_bytes()[:100] for p in pids if Path(f"/proc/{p}").exists()]
        for n, pids in left.items()
    }
    assert not left, f"processes left on the nodes: {detail}"


def _metrics_steps(attempt: Path) -> list[int]:
    path = attempt / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _tiny_args(cluster: Cluster, *extra: str, steps: int) -> list[str]:
    from verl_agrae.testing.tiny_run import tiny_run_argv

    argv = tiny_run_argv("grpo_agrae", cluster.work / "model", cluster.work / "data", "unused", *extra, steps=steps)
    # train.sbatch gives the config name and run.dir itself
    return [argv[1]] + [a for a in argv[2:] if not a.startswith("run.dir=")]


# ---------------------------------------------------------------------------------------------------------
# Node addresses
# ---------------------------------------------------------------------------------------------------------


def test_node_address_is_the_interface_when_the_hostname_maps_to_loopback(cluster):
    """Inside a node with Debian's `127.0.1.1 <hostname>` line: `hostname --ip-address` is loopback, and the library's
    resolver returns the node's bridge address instead (and the named interface's address with AGRAE_NODE_IFACE)."""
    script = (
        'printf "127.0.0.1 localhost\\n127.0.1.1 n2\\n" >/tmp/debian-hosts && mount --bind /tmp/debian-hosts /etc/hosts'
        f" && source {SLURM_DIR}/lib/ray_cluster.sh"
        ' && echo "hostname: $(hostname --ip-address)" && echo "default: $(_agrae_local_ip)"'
        ' && echo "eth0: $(_agrae_local_ip eth0)"'
    )
    res = subprocess.run(
        [str(CLUSTER_SCRIPT), "exec", "n2", str(cluster.state), "--", "unshare", "--mount", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["hostname: 127.0.1.1", "default: 10.200.0.12", "eth0: 10.200.0.12"]


# ---------------------------------------------------------------------------------------------------------
# Training on two nodes
# ---------------------------------------------------------------------------------------------------------

# verl's separate layout: the actor (with its reference) on one logical GPU, the rollout server on the other. Each
# node declares one logical GPU to Ray, so the two pools land on different nodes and the weights travel between
# them through our gloo checkpoint engine.
SEPARATE = (
    "trainer.v1.trainer_mode=agrae_separate_async",
    "actor_rollout_ref.hybrid_engine=False",
    "trainer.nnodes=1",
    "trainer.n_gpus_per_node=1",
    "actor_rollout_ref.rollout.nnodes=1",
    "actor_rollout_ref.rollout.n_gpus_per_node=1",
    "trainer.v1.separate_async.parameter_sync_step=1",
    "trainer.v1.separate_async.num_warmup_batches=0",
)
CPU_NODE_ENV = {"AGRAE_GPUS_PER_NODE": "1", "AGRAE_CPUS_PER_NODE": "16"}  # logical, as docs/cpu.md explains


def _actor_classes_on(cluster: Cluster, node: str, job_id: int) -> set[str]:
    """Ray actor classes whose workers ran on ``node`` in the job (Ray's per-node worker logs in the node's /tmp)."""
    names = set()
    for log in (cluster.node_tmp(node) / f"ray-{job_id}").glob("session_*/logs/worker-*.out"):
        names.update(re.findall(r":actor_name:(\w+)", _log(log)))
    return names


def test_train_sbatch_on_two_nodes_runs_verl_with_ray_across_both(cluster):
    work = cluster.work / "train2"
    (work / "logs").mkdir(parents=True)
    args = _tiny_args(cluster, *SEPARATE, steps=2)
    job = _sbatch(
        cluster, work, "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=2", "--job-name=two-nodes", "--time=60",
        str(SLURM_DIR / "train.sbatch"), *args, AGRAE_SKIP_DOCTOR="1", **CPU_NODE_ENV,
    )  # fmt: skip
    info = _ended(cluster, job)
    log = _log(work / "logs" / f"two-nodes-{job}.out")
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    nodes = re.search(r"nodes \(2\): (\S+) (\S+);", log).groups()
    assert "ray cluster ready: 2 node(s), 2 GPU(s)" in log
    assert "steps: --cpus-per-task=2" in log  # every CPU of the allocation for the Ray steps
    assert re.search(r"head \S+ at 10\.200\.0\.1\d:\d+", log)  # a bridge address, not loopback
    run_dir = work / "runs" / "two-nodes"
    assert _metrics_steps(run_dir / "attempts" / "attempt-01") == [1, 2]
    assert "training finished" in log
    # The actor trained on one node, the rollout server generated on the other.
    placed = {node: _actor_classes_on(cluster, node, job) for node in nodes}
    actor_nodes = [n for n in nodes if "WorkerDict" in placed[n]]
    rollout_nodes = [n for n in nodes if "HFRolloutServer" in placed[n]]
    assert len(actor_nodes) == 1 and len(rollout_nodes) == 1 and actor_nodes != rollout_nodes, placed
    assert "ray cluster stopped (2 step(s))" in log
    _assert_nodes_idle(cluster, list(nodes))


# ---------------------------------------------------------------------------------------------------------
# Evaluation sweep: array + dependent report
# ---------------------------------------------------------------------------------------------------------


def _write_sweep(path: Path, model: Path, out: Path) -> Path:
    path.write_text(
        f"""
output_dir: {out}
runs:
  - {{name: tiny, model: {model}}}
benchmarks:
  - {{name: arith, preset: arithmetic, limit: 6, n_train: 8, n_val: 16}}
sampling:
  - {{name: s1, n: 4, max_tokens: 8, seed: 1}}
  - {{name: s2, n: 4, max_tokens: 8, seed: 2, temperature: 0.7}}
generation: {{backend: hf, shard_size: 2, batch_size: 8, dtype: float32}}
grading: {{timeout: 5, num_workers: 1}}
report: {{num_boot: 200, maj_draws: 32}}
"""
    )
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_eval_sweep_array_and_dependent_report_equal_a_local_run(cluster):
    from verl_agrae.eval.cli import main as eval_main

    work = cluster.work / "eval"
    work.mkdir()
    out = work / "slurm-out"
    sweep = _write_sweep(work / "sweep.yaml", cluster.work / "model", out)
    # Submitted from a shell without verl-agrae on PATH: the script counts the cells in the jobs' environment.
    res = subprocess.run(
        [str(SLURM_DIR / "submit_eval_sweep.sh"), str(sweep), "--gpus-per-node=0", "--cpus-per-task=2"],
        env={**cluster.env, "AGRAE_SKIP_DOCTOR": "1"}, cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    array, report = map(int, re.search(r"array job (\d+) and the report as job (\d+)", res.stdout).groups())
    assert "submitted 2 cell(s)" in res.stdout
    tasks = [_ended(cluster, f"{array}_{i}") for i in (0, 1)]
    rep = _ended(cluster, report)
    logs = {p.name: _log(p) for p in (work / "logs").iterdir()}
    assert all((t["JobState"], t["ExitCode"]) == ("COMPLETED", "0:0") for t in tasks), logs
    assert (rep["JobState"], rep["ExitCode"]) == ("COMPLETED", "0:0"), logs
    # The report ran after both cells (ISO times compare as strings), on its small default allocation.
    assert rep["StartTime"] >= max(t["EndTime"] for t in tasks)
    assert rep["NumCPUs"] == "2"

    local = work / "local-out"
    assert eval_main(["sweep", str(sweep), "--output-dir", str(local), "--no-progress"]) == 0
    slurm_files, local_files = _tree(out / "cells"), _tree(local / "cells")
    assert slurm_files.keys() == local_files.keys() and slurm_files == local_files
    for name in ("passk.csv", "comparisons.csv", "summary.json", "summary.md"):
        assert (out / "report" / name).read_bytes() == (local / "report" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------------------
# verl-agrae compare: training jobs, sweep file, evaluation array, report
# ---------------------------------------------------------------------------------------------------------


def _submit_compare(cluster: Cluster, work: Path, *extra_overrides: str) -> tuple[Path, list[int]]:
    """Submit a two-run tiny comparison with slurm/submit_compare.sh; returns its output directory and job ids
    (training 1, training 2, sweep file, evaluation array, report)."""
    work.mkdir()
    out = work / "out"
    # The tiny runs' overrides (model, data, sizes), one step, and a checkpoint at that step.
    tiny = _tiny_args(cluster, "trainer.save_freq=1", *extra_overrides, steps=1)[1:]
    experiment = work / "tiny.yaml"
    experiment.write_text(
        f"""\
output_dir: {out}
base_model: {cluster.work / "model"}
methods:
  - {{name: grpo, config: grpo}}
  - {{name: agrae, config: grpo_agrae}}
baseline: grpo
seeds: [0]
overrides: {json.dumps(tiny)}
evaluation:
  benchmark: {{name: arith, preset: arithmetic, limit: 4, n_train: 8, n_val: 16}}
  sampling: {{name: s, n: 4, max_tokens: 8, seed: 1}}
  generation: {{backend: hf, shard_size: 2, batch_size: 8, dtype: float32}}
  grading: {{timeout: 5, num_workers: 1}}
report: {{ks: [1, 2, 4], num_boot: 200}}
"""
    )
    # Submitted from a shell without verl-agrae on PATH: the script reads the experiment in the jobs' environment.
    # --time=60: train.sbatch asks for SLURM's warning 30 min before the limit (--signal=B:USR1@1800); a shorter
    # limit would warn at once and stop the training before it starts.
    res = subprocess.run(
        [str(SLURM_DIR / "submit_compare.sh"), str(experiment), "--nodes=1", "--gpus-per-node=0",
         "--cpus-per-task=2", "--time=60"],
        env={**cluster.env, "AGRAE_SKIP_DOCTOR": "1", "AGRAE_EVAL_SBATCH": "--gpus-per-node=0 --cpus-per-task=2",
             **CPU_NODE_ENV},
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    found = re.search(
        r"submitted 2 training job\(s\) (\d+) (\d+), the sweep file as job (\d+), 3 cell\(s\) as array job (\d+) "
        r"and the report as job (\d+)",
        res.stdout,
    )
    assert found, res.stdout
    return out, list(map(int, found.groups()))


def test_submit_compare_trains_each_run_then_evaluates_as_an_array_and_reports(cluster):
    work = cluster.work / "compare"
    out, (train1, train2, sweep_job, array, report_job) = _submit_compare(cluster, work)

    report = _ended(cluster, report_job)
    jobs = {j: _job(cluster, j) for j in (train1, train2, sweep_job, *(f"{array}_{i}" for i in range(3)))}
    logs = {p.name: _log(p)[-3000:] for p in (work / "logs").iterdir()}
    for j, info in {**jobs, report_job: report}.items():
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), (j, logs)
    # Each step waited for the one before (ISO times compare as strings).
    assert jobs[sweep_job]["StartTime"] >= max(jobs[train1]["EndTime"], jobs[train2]["EndTime"])
    cells = [jobs[f"{array}_{i}"] for i in range(3)]
    assert min(c["StartTime"] for c in cells) >= jobs[sweep_job]["EndTime"]
    assert report["StartTime"] >= max(c["EndTime"] for c in cells)

    # Every run trained its step into its own directory and saved Hugging Face weights for the evaluation.
    for run in ("grpo-seed0", "agrae-seed0"):
        run_dir = out / "runs" / run
        assert _metrics_steps(run_dir / "attempts" / "attempt-01") == [1]
        assert any((run_dir / "checkpoints" / "global_step_1" / "actor" / "huggingface").glob("*.safetensors"))
    summary = json.loads((out / "report" / "compare.json").read_text())
    assert set(summary["passk"]) == {"base", "grpo", "agrae"} and set(summary["diff"]) == {"agrae"}
    assert summary["ks"] == [1, 2, 4]
    assert (out / "report" / "compare.md").is_file() and (out / "report" / "passk.png").is_file()


def test_submit_compare_cancels_what_a_failed_training_job_makes_impossible(cluster):
    """A training run that fails (here: an unknown model path, refused before Ray starts the trainer) leaves no job
    pending forever: the sweep file and the evaluation array are cancelled, the report runs and names what is
    missing."""
    work = cluster.work / "compare-fails"
    _, (train1, train2, sweep_job, array, report_job) = _submit_compare(
        cluster, work, "actor_rollout_ref.model.path=/nonexistent/model"
    )
    # The first failure cancels the rest of the chain, so the report may end before the other training job.
    report = _ended(cluster, report_job)
    trained = [_ended(cluster, j) for j in (train1, train2)]
    logs = {p.name: _log(p)[-3000:] for p in (work / "logs").iterdir()}
    assert [t["JobState"] for t in trained] == ["FAILED", "FAILED"], logs
    for j in (sweep_job, *(f"{array}_{i}" for i in range(3))):
        assert _job(cluster, j)["JobState"] == "CANCELLED", (j, logs)
    assert report["JobState"] == "FAILED", logs
    report_log = next(text for name, text in logs.items() if "-report-" in name)
    assert "no evaluation to report" in report_log and "did a training run fail?" in report_log, report_log


# ---------------------------------------------------------------------------------------------------------
# verl-agrae doctor on three nodes
# ---------------------------------------------------------------------------------------------------------


def test_doctor_passes_on_three_nodes_and_names_a_node_without_the_plugin(cluster):
    work = cluster.work / "doctor"
    (work / "logs").mkdir(parents=True)
    opts = ("--nodes=3", "--gpus-per-node=0", "--time=20")
    job = _sbatch(cluster, work, *opts, "--job-name=doctor-ok", str(SLURM_DIR / "doctor.sbatch"))
    info = _ended(cluster, job)
    log = _log(work / "logs" / f"doctor-ok-{job}.out")
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert "verl-agrae doctor: OK (3 node(s), 'agrae' registered everywhere)" in log
    assert all(f"10.200.0.1{i}" in log for i in (1, 2, 3))  # one row per node

    # n3 as a site could leave it: verl's plugin discovery switched off there (a node-specific task environment).
    task_env = cluster.state / "nodes" / "n3" / "task.env"
    task_env.write_text("VERL_USE_EXTERNAL_PLUGINS=none\n")
    try:  # n3 as a worker beside a good node (the head)
        bad_opts = ("--nodes=2", "--nodelist=n1,n3", "--gpus-per-node=0", "--time=20", "--job-name=doctor-bad")
        job = _sbatch(cluster, work, *bad_opts, str(SLURM_DIR / "doctor.sbatch"))
        info = _ended(cluster, job)
    finally:
        task_env.unlink()
    log = _log(work / "logs" / f"doctor-bad-{job}.out")
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "1:0", log[-4000:]
    assert "verl-agrae doctor: FAILED" in log
    assert re.search(r"10\.200\.0\.13: advantage estimator 'agrae' is not verl-agrae's", log), log[-3000:]
    assert "10.200.0.11" in log and not re.search(r"10\.200\.0\.11: advantage estimator", log)  # only n3 is named
    assert "verl-agrae doctor failed" in log
    _assert_nodes_idle(cluster, ["n1", "n2", "n3"])


# ---------------------------------------------------------------------------------------------------------
# Requeue before the time limit
# ---------------------------------------------------------------------------------------------------------

WARN_S = 60  # --signal=B:USR1@60: room for one tiny step, its checkpoint and the cleanup


def test_time_limit_warning_saves_at_the_step_end_requeues_and_resumes_then_scancel_cleans_up(cluster):
    """The job runs long (200 steps, no periodic checkpoint). Once it has trained two steps, its time limit is
    lowered so that SLURM's own warning (--signal=B:USR1@60) comes while it trains: the trainer saves the step it is
    in and stops, the job requeues itself, the restart resumes after the saved step without validating first, and
    `scancel` then ends it with nothing left running."""
    work = cluster.work / "requeue"
    (work / "logs").mkdir(parents=True)
    args = _tiny_args(cluster, "trainer.val_before_train=True", steps=200)
    job = _sbatch(
        cluster, work, "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--job-name=requeue", "--time=30",
        f"--signal=B:USR1@{WARN_S}", str(SLURM_DIR / "train.sbatch"), *args, AGRAE_SKIP_DOCTOR="1", **CPU_NODE_ENV,
    )  # fmt: skip
    log_path = work / "logs" / f"requeue-{job}.out"
    run_dir = work / "runs" / "requeue"
    attempt1, attempt2 = run_dir / "attempts" / "attempt-01", run_dir / "attempts" / "attempt-02"

    _wait_while_running(
        cluster, job, log_path, lambda: len(_metrics_steps(attempt1)) >= 3, "two trained steps in the first attempt"
    )  # and the validation row
    assert "time limit near" not in _log(log_path)
    run_s = _seconds(_job(cluster, job)["RunTime"])
    limit_min = math.ceil((run_s + WARN_S + 10) / 60)  # SLURM keeps time limits in whole minutes
    assert cluster.run("scontrol", "update", f"JobId={job}", f"TimeLimit={limit_min}").returncode == 0

    # SLURM warns, the trainer saves and stops, the job requeues itself: the record shows one restart.
    _wait_while_running(
        cluster, job, log_path, lambda: int(_job(cluster, job).get("Restarts", "0")) >= 1, "the job to requeue itself"
    )
    log = _log(log_path)
    saved = int(re.search(r"after saving step (\d+)", log).group(1))
    trained1 = [s for s in _metrics_steps(attempt1) if s > 0]
    assert trained1 == list(range(1, saved + 1))  # every trained step is in the checkpoint: none lost
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("global_step_*")) == [f"global_step_{saved}"]
    order = [log.index(t) for t in ("time limit near (SIGUSR1)", "after saving step", "requeueing job")]
    assert order == sorted(order), log[-4000:]
    assert f"checkpoint step: 0 -> {saved} in this attempt; requeueing job {job}" in log
    # The restart gets a full time limit again (the lowered one would warn before it could train).
    assert cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=30").returncode == 0

    # The restart resumes after the saved step, skipping validation before training.
    _wait_while_running(
        cluster,
        job,
        log_path,
        lambda: [s for s in _metrics_steps(attempt2) if s > 0],
        "a trained step after the restart",
    )
    assert json.loads((attempt2 / "attempt.json").read_text())["start_step"] == saved + 1
    assert min(_metrics_steps(attempt2)) == saved + 1  # no validation row (step saved) before training
    log = _log(log_path)
    assert f"restart 1: resuming from {run_dir}/checkpoints/global_step_{saved}" in log
    assert "resuming: skipping validation before training" in log
    node = _job(cluster, job)["NodeList"]

    assert cluster.run("scancel", str(job)).returncode == 0
    info = _ended(cluster, job)
    assert info["JobState"] == "CANCELLED"
    _assert_nodes_idle(cluster, [node])
    assert "caught SIGTERM" in _log(log_path)


def _seconds(runtime: str) -> int:
    """SLURM's [D-]HH:MM:SS as seconds."""
    days, _, hms = runtime.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def test_time_limit_warning_during_set_up_ends_the_job_without_requeue(cluster):
    """USR1 delivered by SLURM to the batch shell (as --signal=B:USR1 does) before training could start: the job
    starts no training and does not requeue itself (the restart would get the warning just as early)."""
    work = cluster.work / "no-progress"
    (work / "logs").mkdir(parents=True)
    gate = work / "go"
    # A site environment file that holds the job in its set-up until the test has delivered the signal.
    env_file = work / "site.sh"
    env_file.write_text(f'echo "set-up waits for {gate}" >&2\nwhile [[ ! -e {gate} ]]; do sleep 0.2; done\n')
    job = _sbatch(
        cluster, work, "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--job-name=early", "--time=60",
        str(SLURM_DIR / "train.sbatch"), *_tiny_args(cluster, steps=5), AGRAE_ENV_FILE=str(env_file), **CPU_NODE_ENV,
    )  # fmt: skip
    log_path = work / "logs" / f"early-{job}.out"
    _wait_while_running(cluster, job, log_path, lambda: "set-up waits for" in _log(log_path), "the job's set-up")
    assert cluster.run("scancel", "--batch", "--signal=USR1", str(job)).returncode == 0
    _wait_while_running(
        cluster, job, log_path, lambda: "time limit near (SIGUSR1)" in _log(log_path), "the shell to take the signal"
    )
    gate.touch()
    info = _ended(cluster, job)
    log = _log(log_path)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "1:0", "0"), log
    assert "made no progress (checkpoint step still 0; the warning came before training started): not requeueing" in log
    assert "verl-agrae train" not in log and "ray start" not in log  # stopped before Ray and before training
    _assert_nodes_idle(cluster, [info["NodeList"]])
