"""A Ray actor dying under verl's TaskRunner: the driver's error names the verl role.

The actors below carry the class and method names of verl's processes and really die (``os._exit``) while
a TaskRunner-like actor waits on them, so the exceptions are the ones Ray raises in a real run.
"""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")


def _driver_error(target_cls: str, method: str, layout: str = "fused") -> BaseException:
    """What the driver gets when ``target_cls``'s process dies in ``method``, under a TaskRunner-like actor.

    ``layout``: "fused" (one WorkerDict serves actor_rollout_wg and ref_policy_wg, verl's default), "separate"
    (the reference has its own WorkerDict), or "unknown" (a trainer without our mixin: no layout note).
    """

    # Defined here, not at module level, so cloudpickle ships them by value (workers cannot import this file).
    class HFRolloutServer:
        def generate(self):
            os._exit(1)

    class WorkerDict:
        def actor_rollout_ref_update_actor(self):
            os._exit(1)

        def ref_compute_ref_log_prob(self):
            os._exit(1)

    class WorkerGroup:  # verl's RayWorkerGroup: actor handles in `_workers`, a blocking method per role method
        def __init__(self, handle, prefix):
            self._workers, self.prefix = [handle], prefix

        def __getattr__(self, name):
            return lambda: ray.get(getattr(self._workers[0], self.prefix + name).remote())

    class Trainer:  # the attribute names and calls of verl's v1 trainer (trainer_base.py)
        def fit(self):
            if target_cls == "HFRolloutServer":
                return ray.get(ray.remote(max_restarts=0)(HFRolloutServer).remote().generate.remote())
            actor = ray.remote(max_restarts=0)(WorkerDict).remote()
            self.actor_rollout_wg = WorkerGroup(actor, "actor_rollout_ref_")
            ref = actor if layout != "separate" else ray.remote(max_restarts=0)(WorkerDict).remote()
            self.ref_policy_wg = WorkerGroup(ref, "ref_")
            if method == "update_actor":
                return self.actor_rollout_wg.update_actor()
            return self.ref_policy_wg.compute_ref_log_prob()

    class TaskRunnerV1:
        def run(self):
            from verl_agrae.integration.trainers import AgraeTrainerMixin

            trainer = (Trainer if layout == "unknown" else type("T", (AgraeTrainerMixin, Trainer), {}))()
            return trainer.fit()

    runner = ray.remote(TaskRunnerV1).remote()
    with pytest.raises(Exception) as info:
        ray.get(runner.run.remote(), timeout=120)
    return info.value


@pytest.mark.parametrize(
    ("target_cls", "method", "layout", "expected"),
    [
        ("HFRolloutServer", "generate", "fused", "rollout server (`hf` backend) [HFRolloutServer]"),
        (
            "WorkerDict",
            "update_actor",
            "fused",
            "actor/rollout/reference policy worker (FSDP) [WorkerDict, in actor_rollout_wg.update_actor]",
        ),
        # The fused worker killed while the reference pass waits on it is still the actor's process too.
        (
            "WorkerDict",
            "compute_ref_log_prob",
            "fused",
            "actor/rollout/reference policy worker (FSDP) [WorkerDict, in ref_policy_wg.compute_ref_log_prob]",
        ),
        (
            "WorkerDict",
            "compute_ref_log_prob",
            "separate",
            "reference policy worker (FSDP) [WorkerDict, in ref_policy_wg.compute_ref_log_prob]",
        ),
        # Without the layout note, the waiting call's group is all there is to go on.
        (
            "WorkerDict",
            "compute_ref_log_prob",
            "unknown",
            "reference policy worker (FSDP) [WorkerDict, in ref_policy_wg.compute_ref_log_prob]",
        ),
    ],
)
def test_dead_actor_under_the_task_runner_is_named_by_role(ray_session, target_cls, method, layout, expected):
    from verl_agrae.trainer.failures import failed_role

    assert failed_role(_driver_error(target_cls, method, layout)) == expected


def test_a_dead_task_runner_is_named(ray_session):
    from verl_agrae.trainer.failures import failed_role

    @ray.remote(max_restarts=0)
    class TaskRunnerV1:
        def run(self):
            os._exit(1)

    with pytest.raises(Exception) as info:
        ray.get(TaskRunnerV1.remote().run.remote(), timeout=120)
    assert failed_role(info.value) == "task runner (verl's driver actor) [TaskRunnerV1]"


def test_ordinary_errors_have_no_role(ray_session):
    from verl_agrae.trainer.failures import failed_role

    @ray.remote
    def boom():
        raise ValueError("data.max_prompt_length too small")

    with pytest.raises(Exception) as info:
        ray.get(boom.remote())
    assert failed_role(info.value) is None
    assert failed_role(KeyError("x")) is None


def test_a_dead_rollout_server_behind_verls_no_trajectories_error_is_named(ray_session):
    """verl's sync buffer reports failed rollouts as "no materializable trajectories"; the trainer mixin finds the
    rollout server actor that died and raises Ray's error for it, which names the role."""
    from verl_agrae.integration.trainers import NO_TRAJECTORIES, AgraeTrainerMixin
    from verl_agrae.trainer.failures import failed_role

    class HFRolloutServer:
        def die(self):
            os._exit(1)

        def ping(self):
            return "alive"

    alive = ray.remote(HFRolloutServer).remote()
    dead = ray.remote(max_restarts=0)(HFRolloutServer).remote()
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(dead.die.remote(), timeout=120)
    assert ray.get(alive.ping.remote()) == "alive"

    class Replica:
        servers = [alive, dead]

    class Manager:
        def get_replicas(self):
            return [Replica()]

    class Base:
        def _step_once(self, metrics, timing_raw, sample_batch_size):
            raise RuntimeError(f"Sync replay buffer {NO_TRAJECTORIES}. Enable trainer.v1.sampler...")

    class Trainer(AgraeTrainerMixin, Base):
        llm_server_manager = Manager()

    with pytest.raises(Exception) as info:
        Trainer()._step_once({}, {}, 2)
    assert failed_role(info.value) == "rollout server (`hf` backend) [HFRolloutServer]"
    assert NO_TRAJECTORIES in str(info.value.__cause__)

    class NoneDead(Trainer):
        llm_server_manager = type("M", (), {"get_replicas": lambda self: [type("R", (), {"servers": [alive]})()]})()

    with pytest.raises(RuntimeError, match="no materializable trajectories"):  # nobody died: verl's error stands
        NoneDead()._step_once({}, {}, 2)
