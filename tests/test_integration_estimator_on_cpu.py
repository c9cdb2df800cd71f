"""`agrae` reaches verl's registry through the entry point, in fresh processes and Ray actors; verl's own
compute_advantage functions produce A-GRAE advantages; the trainer and the estimator exchange a step's state through
an explicit AgraeStep, and a computation in another process is reported as such."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from verl_agrae.advantage import compute_agrae_outcome_advantage

FRESH_CHECK = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
    "fn = get_adv_estimator_fn('agrae')\n"
    "print(fn.__module__ + '.' + fn.__qualname__)\n"
)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_plain_import_verl_in_fresh_process_finds_agrae():
    out = _run(FRESH_CHECK)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("verl_agrae.integration.estimator.agrae_advantage_estimator")


def test_ensure_registered_fails_loudly_when_plugins_are_disabled():
    code = "from verl_agrae.integration.estimator import ensure_registered\nensure_registered()\n"
    out = _run(code, VERL_USE_EXTERNAL_PLUGINS="none")
    assert out.returncode != 0
    assert "VERL_USE_EXTERNAL_PLUGINS=none" in out.stderr
    out = _run(code, VERL_USE_EXTERNAL_PLUGINS="someone_else")
    assert out.returncode != 0 and "does not list 'agrae'" in out.stderr
    assert _run(code).returncode == 0


def test_registered_inside_a_ray_actor():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=1)
        class Probe:
            def which(self) -> str:
                import verl  # noqa: F401
                from verl.trainer.ppo.core_algos import get_adv_estimator_fn

                fn = get_adv_estimator_fn("agrae")
                return fn.__module__ + "." + fn.__qualname__

        probe = Probe.remote()
        assert (
            ray.get(probe.which.remote(), timeout=240) == "verl_agrae.integration.estimator.agrae_advantage_estimator"
        )
    finally:
        ray.shutdown()


def _dataproto(seed: int = 0):
    from omegaconf import OmegaConf
    from verl import DataProto

    g = torch.Generator().manual_seed(seed)
    bs, length = 24, 5
    uids = np.array([f"u{i // 4}" for i in range(bs)], dtype=object)
    r = torch.randint(0, 2, (bs,), generator=g).float()
    mask = torch.ones(bs, length)
    mask[:, 3:] = 0
    tlr = torch.zeros(bs, length)
    tlr[:, 2] = r
    data = DataProto.from_dict(
        tensors={"token_level_rewards": tlr, "response_mask": mask},
        non_tensors={"uid": uids},
    )
    algo = OmegaConf.create(
        {"adv_estimator": "agrae", "norm_adv_by_std_in_grpo": True, "agrae": {"alpha": 0.7}, "gamma": 1.0}
    )
    OmegaConf.set_struct(algo, True)
    expected, _ = compute_agrae_outcome_advantage(tlr, mask, uids, alpha=0.7)
    return data, algo, expected


def test_verl_legacy_compute_advantage_uses_agrae():
    from verl.trainer.ppo.ray_trainer import compute_advantage

    data, algo, expected = _dataproto()
    out = compute_advantage(data, adv_estimator="agrae", config=algo)
    torch.testing.assert_close(out.batch["advantages"], expected)
    torch.testing.assert_close(out.batch["returns"], expected)
    assert not torch.equal(expected, torch.zeros_like(expected))


def test_verl_v1_compute_advantage_uses_agrae():
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    data, algo, expected = _dataproto(1)
    keys = [f"{u}_0_{i}" for i, u in enumerate(data.non_tensor_batch["uid"])]
    out = compute_advantage_for_multi_trajectories(data, keys, adv_estimator="agrae", config=algo)
    torch.testing.assert_close(out.batch["advantages"], expected)


def _kw(data, algo):
    return dict(
        token_level_rewards=data.batch["token_level_rewards"],
        response_mask=data.batch["response_mask"],
        index=data.non_tensor_batch["uid"],
        config=algo,
    )


def test_estimator_options_come_from_config_and_errors_name_the_key():
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from verl_agrae.integration.estimator import AgraeStep, bind_step

    fn = get_adv_estimator_fn("agrae")
    data, algo, _ = _dataproto(2)
    kw = _kw(data, {"agrae": {"suppress_correct": False}})
    with bind_step(AgraeStep()) as step:
        adv, _ = fn(**kw)
    expected, _ = compute_agrae_outcome_advantage(
        kw["token_level_rewards"], kw["response_mask"], kw["index"], suppress_correct=False
    )
    torch.testing.assert_close(adv, expected)
    # The result carries the options it ran with and where mu came from.
    assert step.result.suppression == 1.0 and step.result.options.suppress_correct is False
    assert step.result.mu_source == "generated" and step.result.extra_group_success == ()
    assert step.inputs["token_level_rewards"] is kw["token_level_rewards"]
    with pytest.raises(ValueError, match="algorithm.agrae.alpha"):
        fn(**_kw(data, {"agrae": {"alpha": -2}}))


def test_step_state_reaches_the_registered_estimator_and_does_not_leak():
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from verl_agrae.integration.estimator import AgraeStep, bind_step

    data, algo, _ = _dataproto(3)
    fn = get_adv_estimator_fn("agrae")
    with bind_step(AgraeStep()) as alone:
        fn(**_kw(data, algo))
    with bind_step(AgraeStep(dropped_groups={1.0: 6})) as inside:
        fn(**_kw(data, algo))
    unbound = AgraeStep()
    fn(**_kw(data, algo))  # no step bound: nobody receives the result, nothing is kept anywhere
    assert unbound.result is None and inside.result is not alone.result
    n = len(set(data.non_tensor_batch["uid"]))
    assert inside.result.mu_batch == alone.result.mu
    assert inside.result.mu == pytest.approx((alone.result.mu * n + 6) / (n + 6))
    assert inside.result.extra_group_success == (1.0,) * 6


def _estimate_in_child(kw: dict) -> tuple[str, float]:
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    adv, _ = get_adv_estimator_fn("agrae")(**kw)
    return "ran", float(adv.abs().sum())


def test_advantages_computed_in_another_process_do_not_reach_the_trainer():
    """A bound step belongs to its process (and thread): an estimator call in another process computes A-GRAE from
    the batch alone and the parent's step receives nothing, which our trainer turns into an error."""
    import multiprocessing as mp

    from verl_agrae.integration.estimator import AgraeStep, bind_step

    data, algo, expected = _dataproto(4)
    kw = _kw(data, algo)
    with bind_step(AgraeStep(dropped_groups={1.0: 2})) as step:
        with mp.get_context("spawn").Pool(1) as pool:
            status, total = pool.apply(_estimate_in_child, (kw,))
    assert status == "ran" and total == pytest.approx(float(expected.abs().sum()), rel=1e-6)  # the batch's own mu
    assert step.result is None


def test_trainer_raises_when_the_estimator_ran_elsewhere():
    from types import SimpleNamespace

    from verl_agrae.integration.trainers import AgraeTrainerMixin

    class _Base:
        def __init__(self, config):
            self.config = config

        def _compute_advantage(self, batch, metrics):  # verl computed advantages without calling us here
            return batch

    class _Trainer(AgraeTrainerMixin, _Base):
        pass

    from omegaconf import OmegaConf

    trainer = _Trainer(OmegaConf.create({"algorithm": {"adv_estimator": "agrae", "agrae": {}}}))
    with pytest.raises(RuntimeError, match="did not run in the trainer's process"):
        trainer._compute_advantage(SimpleNamespace(non_tensor_batch={}), {})


def test_trainer_modes_register_lazily_when_verl_v1_is_imported():
    code = (
        "import sys, verl\n"
        "assert 'verl_agrae.integration.trainers' not in sys.modules, 'plain import verl must stay light'\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "print(get_trainer_cls('agrae_sync').__name__, get_trainer_cls('agrae_separate_async').__name__)\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AgraeSyncTrainer", "AgraeSeparateAsyncTrainer"]
