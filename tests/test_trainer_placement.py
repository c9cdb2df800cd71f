"""Separate placement on CPU with logical GPUs: rollout, reference and actor on their own Ray resource pools.

verl's ``separate_async`` layout (our ``agrae_separate_async``) with ``hybrid_engine=False`` and a reference
pool runs three resource pools: the actor on ``global_pool``, the reference policy on ``ref_pool`` and one
rollout replica on ``rollout_pool_0`` (a ``CheckpointEngineWorker`` plus its ``hf`` server process), with
the weights moving from the actor to the rollout worker through our ``gloo`` checkpoint engine.

The slow test trains two steps in that layout and two in the fused default (``agrae_sync``: actor, reference
and rollout adapter in one process), with the same seeds, and checks

1. from Ray's actor table, read while each run is alive, that the roles are distinct actors in distinct
   processes on distinct placement groups (and, as the control, that the fused run has one worker process);
2. that both layouts train on the same rollouts and give the same losses at step 1 and step 2.

(2) needs identical rollouts. With ``rollout.full_determinism=True`` the ``hf`` server seeds every unseeded
sampled request from ``(rollout.seed, prompt tokens, k)`` for the k-th request of that prompt, so the samples
do not depend on arrival order, batching or process layout (tested below without Ray). verl's separate
trainer prefetches batches and trains on the groups that finish first (``num_warmup_batches=1`` by default);
``num_warmup_batches=0`` makes it train on the dataloader's batches in order, as the sync trainer does.
Step 2 then also proves the weight sync: its rollouts come from the weights trained at step 1, which reach
the rollout pool only through the checkpoint engine.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from verl_agrae.testing.tiny_run import tiny_run_argv

# Same seeds, same float32 ops on the same batch in the same order: the layouts agree to rounding. Samples of
# one group may reach the actor in another order (the rollout pool finishes them in its own order), which
# changes float summation order only; 1e-5 relative is far above that and far below any real difference
# (another batch moved pg_loss by 23% and grad_norm by 33% in a run without warm-up control). Measured in two
# runs: step 1 bitwise equal except entropy (1.6e-7 relative), step 2 within 1.2e-6 relative (kl_loss).
RTOL, ATOL = 1e-5, 1e-7
EXACT_KEYS = ("critic/score/mean", "response_length/mean", "prompt_length/mean")
LOSS_KEYS = ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/entropy", "critic/advantages/mean")


# ---------------------------------------------------------------------------------------------------------
# Deterministic sampling of the hf server (fast, no Ray)
# ---------------------------------------------------------------------------------------------------------


def test_full_determinism_seeds_requests_by_content_not_arrival(lively_model_dir):
    """Under rollout.full_determinism the k-th request of a prompt gets the same sample whatever the order and
    batching of the requests; without it, repeated requests are free to differ between servers."""
    import asyncio

    from verl_agrae.rollout.server import HFRolloutServer
    from verl_agrae.testing.rollout import rollout_configs

    model = lively_model_dir
    prompts = [[5, 40, 100, 7], [9, 12], [5, 40, 100, 7], [33, 8, 61], [9, 12], [5, 40, 100, 7]]
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

    def serve(order: list[int], deterministic: bool, max_batch_size: int) -> dict[tuple[int, ...], list]:
        config, model_config = rollout_configs(model, max_batch_size=max_batch_size, max_wait_ms=50, num_threads=1)
        config.full_determinism = deterministic

        async def main():
            server = HFRolloutServer(config, model_config)
            await server.launch_server(start_http=False)
            try:
                outs = await asyncio.gather(
                    *[
                        server.generate(prompt_ids=prompts[i], sampling_params=dict(params), request_id="x")
                        for i in order
                    ]
                )
            finally:
                await server.shutdown()
            by_prompt: dict[tuple[int, ...], list] = {}
            for i, out in zip(order, outs, strict=True):
                by_prompt.setdefault(tuple(prompts[i]), []).append(tuple(out.token_ids))
            return {k: sorted(v) for k, v in by_prompt.items()}

        return asyncio.run(main())

    forward = list(range(len(prompts)))
    a = serve(forward, True, max_batch_size=8)  # one batch
    b = serve(forward[::-1], True, max_batch_size=2)  # reversed arrival, batches of two
    assert a == b
    assert len(set(a[(5, 40, 100, 7)])) > 1, "the three samples of one prompt must still differ"
    c = serve(forward[::-1], False, max_batch_size=2)
    assert c != a  # the switch matters: the shared generator's draws depend on arrival order


# ---------------------------------------------------------------------------------------------------------
# CPU defaults for the separate layout (fast, no Ray)
# ---------------------------------------------------------------------------------------------------------


def test_cpu_settings_for_separate_async_pick_the_gloo_engine_and_count_every_pool():
    from omegaconf import OmegaConf

    from verl_agrae.trainer.cpu_overrides import apply_cpu_settings
    from verl_agrae.trainer.main import compose_config

    args = ["trainer.v1.trainer_mode=agrae_separate_async", "+ref_pool.nnodes=1", "+ref_pool.n_gpus_per_node=1"]
    config = compose_config("cpu", args)
    apply_cpu_settings(config, args)
    engine = config.actor_rollout_ref.rollout.checkpoint_engine
    assert engine.backend == "gloo"  # verl's own default, `naive`, is refused by its separate_async trainer
    assert engine.custom_backend_module is None  # our entry point registers `gloo` in every process
    assert (config.actor_rollout_ref.rollout.nnodes, config.actor_rollout_ref.rollout.n_gpus_per_node) == (1, 1)
    assert config.ray_kwargs.ray_init.num_gpus == 3  # training pool + rollout pool + reference pool

    # The fused default is left alone, and explicit choices win.
    fused = compose_config("cpu", [])
    apply_cpu_settings(fused, [])
    assert fused.actor_rollout_ref.rollout.checkpoint_engine.backend == "naive"
    assert fused.ray_kwargs.ray_init.num_gpus == 1
    mine = [*args, "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl"]
    config = compose_config("cpu", mine)
    apply_cpu_settings(config, mine, logical_gpus=5)
    assert config.actor_rollout_ref.rollout.checkpoint_engine.backend == "nccl"
    assert OmegaConf.select(config, "ray_kwargs.ray_init.num_gpus") == 5


# ---------------------------------------------------------------------------------------------------------
# Training in both layouts (slow)
# ---------------------------------------------------------------------------------------------------------


def _overrides(model: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_run_argv(
        "cpu",
        model,
        data,
        run_dir,
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.rollout.full_determinism=True",
        # Both layouts recompute old log-probs (the asynchronous one always does): same work, comparable losses.
        "algorithm.rollout_correction.bypass_mode=False",
        *extra,
        steps=2,
    )


SEPARATE = (
    "trainer.v1.trainer_mode=agrae_separate_async",
    "actor_rollout_ref.hybrid_engine=False",
    "+ref_pool.nnodes=1",
    "+ref_pool.n_gpus_per_node=1",
    "actor_rollout_ref.rollout.nnodes=1",
    "actor_rollout_ref.rollout.n_gpus_per_node=1",
    "run.cpu.ray_num_gpus=3",
    # train_batch_size must equal parameter_sync_step * ppo_mini_batch_size (verl's separate_async rule)
    "trainer.v1.separate_async.parameter_sync_step=1",
    # train on the dataloader's batches in order (see the module docstring)
    "trainer.v1.separate_async.num_warmup_batches=0",
)
FUSED = ("trainer.v1.trainer_mode=agrae_sync",)


class ActorTablePoller:
    """Reads Ray's actor and placement-group tables every ``interval`` s while a run in this process is alive."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.snapshots: list[dict] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActorTablePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        import ray
        from ray.util.state import list_actors, list_placement_groups

        url = None
        while not self._stop.wait(self.interval):
            if url is None:
                try:
                    # This process's cluster (other Ray sessions may run on the machine), resolved once: from
                    # here on the poller only talks HTTP to the dashboard and never touches the Ray client that
                    # the run shuts down.
                    url = "http://" + ray._private.worker.get_dashboard_url() if ray.is_initialized() else None
                except Exception as e:
                    self.errors.append(repr(e))
                if url is None:
                    continue
            try:
                actors = list_actors(
                    address=url, filters=[("state", "=", "ALIVE")], detail=True, limit=1000, timeout=10
                )
                pgs = {p.placement_group_id: p.name for p in list_placement_groups(address=url, limit=1000, timeout=10)}
            except Exception as e:  # the cluster is starting or stopping; keep polling
                self.errors.append(repr(e))
                continue
            rows = [
                {
                    "actor_id": a.actor_id,
                    "class_name": a.class_name,
                    "name": a.name or "",
                    "pid": a.pid,
                    "pg": a.placement_group_id,
                    "pg_name": pgs.get(a.placement_group_id, "") if a.placement_group_id else "",
                }
                for a in actors
            ]
            self.snapshots.append({"time": time.time(), "actors": rows})

    def fullest(self, predicate) -> list[dict]:
        """The actor rows of the latest snapshot that satisfies ``predicate(rows)`` (else the largest one)."""
        good = [s["actors"] for s in self.snapshots if predicate(s["actors"])]
        if good:
            return good[-1]
        assert self.snapshots, f"no actor table was read; errors: {self.errors[-3:]}"
        return max((s["actors"] for s in self.snapshots), key=len)


def _in_pool(rows: list[dict], pool: str) -> list[dict]:
    # verl names a pool's placement groups "<pool name>verl_group_<bundles>:<index>".
    return [r for r in rows if r["pg_name"].startswith(pool + "verl_group")]


def _separate_complete(rows: list[dict]) -> bool:
    return all(
        (
            _in_pool(rows, "global_pool"),
            _in_pool(rows, "ref_pool"),
            _in_pool(rows, "rollout_pool_0"),
            any(r["class_name"] == "HFRolloutServer" for r in rows),
        )
    )


def _rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_separate_pools_are_separate_actors_and_match_the_fused_layout(tiny_model_dir, data_dir, tmp_path):
    from verl_agrae.trainer.main import main

    # --- separate layout -----------------------------------------------------------------------------
    sep_dir = tmp_path / "separate"
    with ActorTablePoller() as sep_poll:
        assert main(_overrides(tiny_model_dir, data_dir, sep_dir, *SEPARATE)) == 0
    table = sep_poll.fullest(_separate_complete)
    dump = json.dumps(table, indent=1)
    (actor,) = _in_pool(table, "global_pool")
    (ref,) = _in_pool(table, "ref_pool")
    (rollout_worker,) = _in_pool(table, "rollout_pool_0")
    servers = [r for r in table if r["class_name"] == "HFRolloutServer"]
    assert len(servers) == 1, dump
    server = servers[0]
    assert rollout_worker["class_name"] == "CheckpointEngineWorker", dump
    roles = [actor, ref, rollout_worker, server]
    print("separate layout roles:", json.dumps(roles, indent=1))  # shown with pytest -s
    assert len({r["actor_id"] for r in roles}) == 4, dump
    assert len({r["pid"] for r in roles}) == 4, dump  # four processes
    assert len({actor["pg"], ref["pg"], rollout_worker["pg"]}) == 3, dump  # three placement groups
    assert server["pg"] != actor["pg"] and server["pg"] != ref["pg"], dump  # not inside a training pool

    # --- fused layout (control: one worker process holds actor, reference and rollout adapter) --------
    fused_dir = tmp_path / "fused"
    with ActorTablePoller() as fused_poll:
        assert main(_overrides(tiny_model_dir, data_dir, fused_dir, *FUSED)) == 0
    fused = fused_poll.fullest(lambda rows: bool(_in_pool(rows, "global_pool")))
    assert len(_in_pool(fused, "global_pool")) == 1, json.dumps(fused, indent=1)
    assert not _in_pool(fused, "ref_pool") and not _in_pool(fused, "rollout_pool_0")

    # --- same rollouts, same losses -------------------------------------------------------------------
    sep, ref_rows = _rows(sep_dir), _rows(fused_dir)
    assert {1, 2} <= set(sep) and {1, 2} <= set(ref_rows)
    for step in (1, 2):
        for key in EXACT_KEYS:
            assert sep[step][key] == ref_rows[step][key], (step, key)
        for key in LOSS_KEYS:
            assert sep[step][key] == pytest.approx(ref_rows[step][key], rel=RTOL, abs=ATOL), (step, key)
    # The step-2 rollouts came from the step-1 weights on both sides: the separate layout's rollout worker got
    # them through the gloo checkpoint engine (rollout log-probs equal the actor's recomputation), and the
    # reference on its own pool kept the initial weights (KL now > 0).
    assert sep[2]["training/rollout_probs_diff_max"] < 1e-4
    assert sep[2]["actor/kl_loss"] > 0
    assert sep[2]["training/off_policy/trajectory_staleness/max"] == 0
