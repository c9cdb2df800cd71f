"""The A-GRAE trainer mixin: diagnostics in metrics, mu from all generated groups, reference pool mapping.

These drive the mixin over a minimal stand-in for verl's trainer base (its `_compute_advantage` calls verl's own
`compute_advantage` on a DataProto); the end-to-end runs through verl's real trainer are in the trainer tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_agrae.advantage import agrae_sequence_advantage, dropped_group_success
from verl_agrae.diagnostics import diagnostics_from_result
from verl_agrae.integration.trainers import AgraeTrainerMixin

DAPO_KEY = "_dapo_filtered_reward_counts"


class _Base:
    def __init__(self, config):
        self.config = config

    def _compute_advantage(self, batch, metrics):
        from verl.trainer.ppo.ray_trainer import compute_advantage

        return compute_advantage(batch, adv_estimator=self.config.algorithm.adv_estimator, config=self.config.algorithm)


class _Trainer(AgraeTrainerMixin, _Base):
    pass


def _config(estimator="agrae", **agrae):
    cfg = OmegaConf.create({"algorithm": {"adv_estimator": estimator, "norm_adv_by_std_in_grpo": True, "agrae": agrae}})
    OmegaConf.set_struct(cfg, True)
    return cfg


def _mixed_batch():
    from verl import DataProto

    # what survives DAPO's filter: only mixed groups (p = 0.25, 0.5, 0.75)
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0])
    tlr = r[:, None].repeat(1, 3) / 3
    uids = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 4, dtype=object)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": tlr, "response_mask": torch.ones(12, 3)}, non_tensors={"uid": uids}
    )
    return data, tlr, uids


def test_mu_counts_groups_dropped_by_dynamic_sampling_and_metrics_are_logged():
    data, tlr, uids = _mixed_batch()
    trainer = _Trainer(_config())
    metrics = {DAPO_KEY: {1.0: 3, 0.0: 1}}  # 3 all-solved and 1 all-failed group were dropped
    out = trainer._compute_advantage(data, metrics)
    expected = agrae_sequence_advantage(tlr, torch.ones(12, 3), uids, extra_group_success=[1, 1, 1, 0])
    post_filter = agrae_sequence_advantage(tlr, torch.ones(12, 3), uids)
    assert expected.mu == pytest.approx((0.25 + 0.5 + 0.75 + 3) / 7)
    assert post_filter.mu == pytest.approx(0.5)
    torch.testing.assert_close(out.batch["advantages"], expected.advantages[:, None].expand(12, 3))
    assert not torch.allclose(out.batch["advantages"][:, 0], post_filter.advantages)
    assert metrics["agrae/mu"] == pytest.approx(expected.mu)
    assert metrics["agrae/mu_batch"] == pytest.approx(0.5)
    assert metrics["agrae/groups_dropped"] == 4.0
    direct = diagnostics_from_result(expected)
    for key, value in direct.items():
        assert metrics[key] == pytest.approx(value), key


def test_without_dynamic_sampling_mu_is_the_batch_mean():
    data, tlr, uids = _mixed_batch()
    metrics = {}
    _Trainer(_config(alpha=0.5))._compute_advantage(data, metrics)
    assert metrics["agrae/mu"] == metrics["agrae/mu_batch"] == pytest.approx(0.5)
    assert metrics["agrae/suppression"] == pytest.approx(1.0)
    assert metrics["agrae/groups_dropped"] == 0.0


def test_other_estimators_pass_through_untouched():
    data, _, _ = _mixed_batch()
    metrics = {}
    _Trainer(_config("grpo"))._compute_advantage(data, metrics)
    assert not any(k.startswith("agrae/") for k in metrics)


def test_dropped_group_success_rules():
    assert dropped_group_success(None, None) == []
    assert sorted(dropped_group_success({1.0: 2, 0.0: 1}, None)) == [0.0, 1.0, 1.0]
    assert sorted(dropped_group_success({1.0: 1, -1.0: 2}, 0.0)) == [0.0, 0.0, 1.0]  # DAPO +-1 scores
    with pytest.raises(ValueError, match="success_threshold"):
        dropped_group_success({-1.0: 1}, None)


def test_dropped_groups_and_batch_rows_follow_one_success_rule():
    """Same edge behaviour for a dropped group's shared value and a batch row's reward: the 1e-6 rounding tolerance
    is accepted (and clamped) by both, anything beyond it is refused by both."""
    from verl_agrae.advantage import success_from_rewards

    assert dropped_group_success({1.0 + 5e-7: 1}, None) == [1.0]
    assert success_from_rewards(torch.tensor([1.0 + 5e-7], dtype=torch.float64)).tolist() == [1.0]
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        dropped_group_success({1.01: 1}, None)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        success_from_rewards(torch.tensor([1.01]))
    assert dropped_group_success({0.0: 1, 0.5: 1}, 0.0) == [0.0, 1.0]  # threshold: strictly above


def test_records_are_written_per_global_step(tmp_path, monkeypatch):
    from verl_agrae.integration.trainers import RECORD_DIR_ENV

    monkeypatch.setenv(RECORD_DIR_ENV, str(tmp_path / "rec"))
    data, tlr, uids = _mixed_batch()
    trainer = _Trainer(_config())
    for step in (4, 5):
        trainer.global_steps = step
        trainer._compute_advantage(data, {DAPO_KEY: {1.0: 1}})
    files = sorted(p.name for p in (tmp_path / "rec").iterdir())
    assert files == ["step-00004.pt", "step-00005.pt"]
    rec = torch.load(tmp_path / "rec" / "step-00005.pt", weights_only=False)
    expected = agrae_sequence_advantage(tlr, torch.ones(12, 3), uids, extra_group_success=[1.0])
    assert rec["step"] == 5 and rec["estimator"] == "agrae" and rec["mu_source"] == "generated"
    assert rec["mu"] == pytest.approx(expected.mu) and rec["extra_group_success"] == [1.0]
    assert rec["options"]["alpha"] == 1.0 and rec["index"] == [str(u) for u in uids]
    torch.testing.assert_close(rec["advantages"], expected.advantages[:, None].expand(12, 3))
    torch.testing.assert_close(rec["token_level_rewards"], tlr)


def test_reference_policy_gets_its_own_pool():
    from verl.trainer.ppo.utils import Role

    class _PoolBase:
        def __init__(self, config):
            self.config = config

        def _init_resource_pool_mgr(self):
            from verl.single_controller.ray.base import ResourcePoolManager as RPM

            self.role_worker_mapping = {Role.Actor: object, Role.RefPolicy: object}
            self.mapping = {Role.Actor: "global_pool", Role.RefPolicy: "global_pool"}
            self.resource_pool_manager = RPM(resource_pool_spec={"global_pool": [2]}, mapping=self.mapping)

    class _T(AgraeTrainerMixin, _PoolBase):
        pass

    t = _T(OmegaConf.create({"ref_pool": {"nnodes": 1, "n_gpus_per_node": 1}}))
    t._init_resource_pool_mgr()
    assert t.mapping[Role.RefPolicy] == "ref_pool" and t.mapping[Role.Actor] == "global_pool"
    assert t.resource_pool_manager.resource_pool_spec == {"global_pool": [2], "ref_pool": [1]}

    fused = _T(OmegaConf.create({}))
    fused._init_resource_pool_mgr()
    assert fused.mapping[Role.RefPolicy] == "global_pool"


@pytest.mark.parametrize(("ours", "verls"), [("agrae_sync", "sync"), ("agrae_separate_async", "separate_async")])
def test_our_modes_are_verls_modes_inside_verls_trainer_base(ours, verls):
    """verl's base branches on `trainer_mode == "sync"` (replay buffer, refill, TransferQueue checkpoints) and
    reads `trainer.v1.<mode>`; under our names it must see verl's, or `agrae_sync` would run as an async mode."""
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    from verl_agrae.integration.replay_buffer import AgraeReplayBuffer
    from verl_agrae.integration.trainers import AgraeSeparateAsyncTrainer, AgraeSyncTrainer
    from verl_agrae.trainer.main import compose_config

    config = compose_config("grpo_agrae", [f"trainer.v1.trainer_mode={ours}"])
    cls = AgraeSyncTrainer if verls == "sync" else AgraeSeparateAsyncTrainer
    trainer = cls.__new__(cls)  # verl's __init__ starts Ray workers; only the mode logic is under test
    trainer.config = config
    trainer.trainer_mode = config.trainer.v1.trainer_mode  # what verl's base does with the config value
    assert trainer.trainer_mode == verls
    buffer = trainer._build_replay_buffer()
    # verl's sync buffer, adopted by ours (which adds the left-out groups' success and the generation cap).
    assert type(buffer) is (AgraeReplayBuffer if verls == "sync" else ReplayBufferAsync)
    assert isinstance(buffer, ReplayBuffer if verls == "sync" else ReplayBufferAsync)


def test_poll_interval_reaches_verls_replay_buffer():
    from verl_agrae.integration.trainers import AgraeSyncTrainer
    from verl_agrae.trainer.main import compose_config

    def buffer_of(config):
        trainer = AgraeSyncTrainer.__new__(AgraeSyncTrainer)
        trainer.config = config
        trainer.trainer_mode = config.trainer.v1.trainer_mode
        return trainer._build_replay_buffer()

    assert buffer_of(compose_config("cpu", [])).poll_interval == pytest.approx(0.2)
    assert buffer_of(compose_config("grpo_agrae", [])).poll_interval == pytest.approx(2.0)  # verl's default
    with pytest.raises(ValueError, match="poll_interval must be > 0"):
        buffer_of(compose_config("cpu", ["trainer.v1.sampler.poll_interval=0"]))


def test_a_checkpointed_step_keeps_its_metrics_when_the_final_log_is_lost(tmp_path, monkeypatch):
    """verl saves a step's checkpoint before it logs the step; the mixin puts the step's metrics on disk first, and
    the run directory merges them under verl's own rows (which win where both exist)."""
    import json

    from verl_agrae.trainer.run_dir import CHECKPOINTED_METRICS_FILE, RunDir

    attempt = tmp_path / "run" / "attempts" / "attempt-01"
    attempt.mkdir(parents=True)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(attempt / "metrics.jsonl"))
    seen_at_save = []

    class _Base:
        def step(self, metrics, timing_raw):
            metrics.update({"actor/pg_loss": 0.5 * self.global_steps, "agrae/mu": 0.25, "note": "text"})

        def _save_checkpoint(self):
            seen_at_save.append((attempt / CHECKPOINTED_METRICS_FILE).read_text().count("\n"))

    class _T(AgraeTrainerMixin, _Base):
        pass

    trainer = _T()
    for step in (1, 2):  # verl logs step 1; the run dies after step 2's checkpoint, before its log
        trainer.global_steps = step
        metrics = {}
        trainer.step(metrics, {})
        trainer._save_checkpoint()
    assert seen_at_save == [1, 2]  # written before each checkpoint
    (attempt / "metrics.jsonl").write_text(json.dumps({"step": 1, "data": {"actor/pg_loss": 9.0}}) + "\n")
    rows = {r["step"]: r for r in RunDir(tmp_path / "run").merge_metrics()}
    assert rows[1]["actor/pg_loss"] == 9.0  # verl's own row wins
    assert rows[2] == {"step": 2, "actor/pg_loss": 1.0, "agrae/mu": 0.25}  # survived; non-numbers left out


class _LoopBase:
    """verl 0.9.1's V1 ``fit`` loop reduced to what a stop request touches (trainer_base.py, ``fit``): each step
    trains, saves at ``save_freq`` and on the last step, runs ``on_step_end`` (the weight sync), logs, and the loop
    continues while ``global_steps <= total_training_steps``."""

    def __init__(self, total: int, save_freq: int, touch_after: int | None, stop_file):
        self.total_training_steps, self.save_freq = total, save_freq
        self.touch_after, self.stop_file = touch_after, stop_file
        self.saved, self.synced, self.logged = [], [], []

    def _save_checkpoint(self):
        self.saved.append(self.global_steps)

    def on_step_end(self):
        self.synced.append(self.global_steps)

    def fit(self):
        self.global_steps = 1
        while self.global_steps <= self.total_training_steps:
            is_last_step = self.global_steps >= self.total_training_steps
            if self.global_steps == self.touch_after:  # the request arrives while this step trains
                self.stop_file.write_text("time limit\n")
            if self.save_freq > 0 and (is_last_step or self.global_steps % self.save_freq == 0):
                self._save_checkpoint()
            self.on_step_end()
            self.logged.append(self.global_steps)
            self.global_steps += 1


class _LoopTrainer(AgraeTrainerMixin, _LoopBase):
    pass


@pytest.mark.parametrize(
    ("total", "save_freq", "touch_after", "saved", "logged", "ack"),
    [
        (10, 4, 6, [4, 6], [1, 2, 3, 4, 5, 6], 6),  # saves the step it finished, then stops
        (10, 4, 8, [4, 8], [1, 2, 3, 4, 5, 6, 7, 8], 8),  # verl saved that step already: not twice
        (10, -1, 2, [2], [1, 2], 2),  # no periodic checkpoints at all: the request still saves
        (3, 2, 3, [2, 3], [1, 2, 3], None),  # on the last step the run ends anyway: no stop, no acknowledgement
        (5, 2, None, [2, 4, 5], [1, 2, 3, 4, 5], None),  # no request: verl's behaviour unchanged
    ],
)
def test_stop_request_saves_the_finished_step_and_ends_the_loop(
    tmp_path, monkeypatch, total, save_freq, touch_after, saved, logged, ack
):
    from verl_agrae.trainer import stop_request

    stop_file = tmp_path / "stop-request"
    monkeypatch.setenv(stop_request.STOP_FILE_ENV, str(stop_file))
    trainer = _LoopTrainer(total, save_freq, touch_after, stop_file)
    trainer.fit()
    assert trainer.saved == saved
    assert trainer.logged == logged  # the stopped step is still logged; nothing after it runs
    assert trainer.synced == logged  # verl's own end of step (weight sync) still runs for every trained step
    assert stop_request.acknowledged_step(stop_file) == ack


def test_no_stop_file_variable_means_no_requests(tmp_path, monkeypatch):
    from verl_agrae.trainer import stop_request

    monkeypatch.delenv(stop_request.STOP_FILE_ENV, raising=False)
    stop_file = tmp_path / "stop-request"
    trainer = _LoopTrainer(4, -1, 1, stop_file)
    trainer.fit()
    assert trainer.logged == [1, 2, 3, 4] and trainer.saved == []
    assert stop_request.acknowledged_step(stop_file) is None
