"""End to end: verl's own trainer (Ray TaskRunner, FSDP2 actor + reference workers, `hf` rollout servers,
agent loop, reward workers, validation, checkpoints) on the CPU with A-GRAE, through our entry point.

Each run starts and stops its own Ray session, as a user's run does (a session shared between runs keeps
the first run's placement groups). The reward is a deterministic function of the response text
(`verl_agrae.testing.rewards.parity_reward`), so groups of the random tiny model mix successes and failures
and A-GRAE's terms are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from verl_agrae.testing.tiny_run import tiny_run_argv


def _overrides(model: Path, data: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return tiny_run_argv(
        "cpu",
        model,
        data,
        run_dir,
        "actor_rollout_ref.actor.use_kl_loss=True",
        "trainer.save_freq=2",
        "trainer.test_freq=2",
        "trainer.val_before_train=True",
        *extra,
        steps=steps,
    )


def _rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def _check_records_match_estimator(attempt: Path, steps: list[int]) -> list[dict]:
    """The advantages verl trained on equal an independent call of our pure estimator on the same batch."""
    from verl_agrae.testing.records import load_records, recompute_advantages

    records = load_records(attempt / "advantages")
    assert [rec["step"] for rec in records] == steps
    for rec in records:
        assert rec["estimator"] == "agrae" and rec["mu_source"] == "generated"
        assert rec["options"]["difficulty_shift"] and rec["options"]["suppress_correct"]
        torch.testing.assert_close(rec["advantages"], recompute_advantages(rec), rtol=0, atol=1e-6)
    return records


def _check_live_agrae_metrics(attempt: Path, records: list[dict]) -> None:
    """The `agrae_sync` trainer mode logged A-GRAE diagnostics into verl's own metrics (its file logger's
    output, before our post-run merge), equal to a direct diagnostics call on the same batch."""
    from verl_agrae.advantage import agrae_sequence_advantage
    from verl_agrae.config import AgraeConfig
    from verl_agrae.diagnostics import diagnostics_from_result

    live = {}
    for line in (attempt / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        live.setdefault(row["step"], {}).update(row["data"])
    for rec in records:
        result = agrae_sequence_advantage(
            rec["token_level_rewards"], rec["response_mask"], rec["index"], AgraeConfig(**rec["options"])
        )
        direct = diagnostics_from_result(result)
        for key, value in direct.items():
            assert live[rec["step"]][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (rec["step"], key)
        assert live[rec["step"]]["agrae/groups_dropped"] == 0.0


def _logged_adv_mean(rec: dict) -> float:
    mask = rec["response_mask"].bool()
    return float(rec["advantages"][mask].mean())


def _actor_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((step_dir / "actor").glob("model_world_size_*_rank_0.pt"))
    assert files, f"no actor shard in {step_dir}"
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    return {k: (v.to_local() if hasattr(v, "to_local") else v).float() for k, v in state.items()}


def test_agrae_v1_two_steps_checkpoint_then_resume_at_step_3(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    from verl_agrae.trainer.main import main

    run_dir = tmp_path / "run"
    assert main(_overrides(tiny_model_dir, data_dir, run_dir, 2)) == 0

    rows = _rows(run_dir)
    assert {1, 2} <= set(rows)
    val_key = next(k for k in rows[0] if k.startswith("val-core/") and "/acc/mean@" in k)
    assert val_key in rows[2]  # validation before and after training
    assert (run_dir / "checkpoints" / "global_step_2").is_dir()
    attempt1 = run_dir / "attempts" / "attempt-01"
    records = _check_records_match_estimator(attempt1, steps=[1, 2])
    # The advantages in the logged batch are the recorded ones (verl logs their mean over response tokens).
    for step, rec in zip((1, 2), records, strict=True):
        assert rows[step]["critic/advantages/mean"] == pytest.approx(_logged_adv_mean(rec), abs=1e-5)
        # Bypass mode (the CPU default with our rollout): no separate old-log-prob pass, the rollout's log-probs are
        # the old ones. With one mini-batch the update's forward pass runs at the rollout's weights, so the PPO
        # ratio's log (actor/ppo_kl = mean(old - new)) measures the rollout-vs-actor gap: numerically zero.
        assert "training/rollout_probs_diff_max" not in rows[step]
        assert abs(rows[step]["actor/ppo_kl"]) < 1e-5 and rows[step]["actor/pg_clipfrac"] == 0.0
        assert rows[step]["actor/entropy_loss"] > 0  # entropy now measured by the update
        assert rows[step]["agrae/mu"] == pytest.approx(rows[step]["critic/score/mean"], abs=1e-6)
    assert any(r["advantages"].abs().sum() > 0 for r in records), "reward never varied inside a group"
    _check_live_agrae_metrics(attempt1, records)
    assert rows[2]["actor/kl_loss"] != 0.0  # the reference worker ran and the policy moved away from it

    initial = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    trained = _actor_weights(run_dir / "checkpoints" / "global_step_2")
    common = [k for k in initial if k in trained and initial[k].shape == trained[k].shape]
    assert common
    assert any(not torch.allclose(initial[k].float(), trained[k]) for k in common), "weights did not change"

    # Resume: same run directory, one more step. It must start at step 3 and not redo 1-2.
    assert main(_overrides(tiny_model_dir, data_dir, run_dir, 3)) == 0
    attempt2 = run_dir / "attempts" / "attempt-02"
    assert json.loads((attempt2 / "attempt.json").read_text())["start_step"] == 3
    _check_records_match_estimator(attempt2, steps=[3])
    resumed_steps = {json.loads(line)["step"] for line in (attempt2 / "metrics.jsonl").read_text().splitlines()}
    assert 1 not in resumed_steps and 3 in resumed_steps
    rows = _rows(run_dir)
    assert {1, 2, 3} <= set(rows) and "critic/advantages/mean" in rows[3]
    assert (run_dir / "checkpoints" / "global_step_3").is_dir()
    assert (run_dir / "plots" / "reward.png").is_file() and (run_dir / "plots" / "agrae_balance.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["checkpoint_step"] == 3 and "0" in summary["validation_accuracy"]  # JSON keys


def _sequence_extremes_from_rollout_dump(path: Path, **options) -> tuple[float, float]:
    """Max and min sequence advantage of our estimator on the batch verl dumped (groups = prompts, rewards = scores)."""
    import numpy as np

    from verl_agrae.advantage import agrae_sequence_advantage

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    scores = torch.tensor([[float(r["score"])] for r in rows], dtype=torch.float64)
    uids = np.array([r["input"] for r in rows], dtype=object)
    adv = agrae_sequence_advantage(scores, torch.ones_like(scores), uids, **options).advantages
    return float(adv.max()), float(adv.min())


@pytest.mark.slow
def test_agrae_legacy_trainer_path(tiny_model_dir, data_dir, tmp_path):
    """verl's legacy trainer finds `agrae` in its registry (no trainer mode of ours, so no records or live
    diagnostics): the advantage extremes verl logged are our estimator's on the batch verl dumped."""
    from verl_agrae.trainer.main import main

    run_dir = tmp_path / "legacy"
    assert main(_overrides(tiny_model_dir, data_dir, run_dir, 1, "trainer.use_v1=False", "trainer.save_freq=1")) == 0
    rows = _rows(run_dir)
    dump = run_dir / "rollouts" / "1.jsonl"
    hi, lo = _sequence_extremes_from_rollout_dump(dump)
    assert rows[1]["critic/advantages/max"] == pytest.approx(hi, abs=1e-5)
    assert rows[1]["critic/advantages/min"] == pytest.approx(lo, abs=1e-5)
    grpo = _sequence_extremes_from_rollout_dump(dump, difficulty_shift=False, suppress_correct=False)
    if grpo != pytest.approx((hi, lo), abs=1e-4):  # tells A-GRAE from GRPO whenever the batch can
        assert (rows[1]["critic/advantages/max"], rows[1]["critic/advantages/min"]) != pytest.approx(grpo, abs=1e-4)
    assert rows[1]["training/rollout_probs_diff_max"] < 1e-3
    assert (run_dir / "checkpoints" / "global_step_1").is_dir()


@pytest.mark.slow
def test_grpo_for_comparison(tiny_model_dir, data_dir, tmp_path):
    """Plain GRPO through the same path (`agrae` with both terms off, as the packaged `grpo` config): verl trained on
    verl's own GRPO advantages, the live diagnostics show its symmetry, and A-GRAE's differ on the same batch."""
    import numpy as np
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from verl_agrae.advantage import compute_agrae_outcome_advantage
    from verl_agrae.testing.records import load_records
    from verl_agrae.trainer.main import main

    run_dir = tmp_path / "grpo"
    terms_off = ["algorithm.agrae.difficulty_shift=False", "algorithm.agrae.suppress_correct=False"]
    assert main(_overrides(tiny_model_dir, data_dir, run_dir, 1, *terms_off)) == 0
    (rec,) = load_records(run_dir / "attempts" / "attempt-01" / "advantages")
    expected, _ = compute_grpo_outcome_advantage(
        rec["token_level_rewards"], rec["response_mask"], np.array(rec["index"], dtype=object)
    )
    torch.testing.assert_close(rec["advantages"], expected)
    rows = _rows(run_dir)
    # GRPO is symmetric within groups: positive and negative advantage mass balance.
    assert rows[1]["agrae/adv_balance"] == pytest.approx(0.0, abs=1e-5)
    if 0 < rows[1]["agrae/mu"] < 1 and rec["advantages"].abs().sum() > 0:
        agrae, _ = compute_agrae_outcome_advantage(rec["token_level_rewards"], rec["response_mask"], rec["index"])
        assert not torch.allclose(agrae, rec["advantages"])
