"""Each packaged config (GRPO, Dr.GRPO, DAPO, each with and without A-GRAE) trains one real step with verl's
trainer on the CPU (tiny local model, `hf` rollout), and its semantics reach the advantages verl trained on.

The advantages are checked against formulas written here from the papers, on the rewards of the same batch:
GRPO ``(r - mean) / (std + eps)``, Dr.GRPO ``r - mean``, A-GRAE our estimator (itself checked against a
reference loop in test_advantage_on_cpu.py). The DAPO + A-GRAE run also proves that mu counts the groups
dynamic sampling dropped: the reward below makes every prompt with an even answer all-solved, and the
reward log rebuilds every generated group independently of verl's own accounting.

Each run starts its own Ray session (about a minute on 2 cores), so only the DAPO + A-GRAE run is in the
default test run; the other five are marked slow (`pytest -m slow`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from verl_agrae.testing.tiny_run import tiny_run_argv

EPS = 1e-6


def _run(config_name: str, model, data, run_dir: Path, *extra: str, reward: str = "parity_reward") -> dict:
    from verl_agrae.trainer.main import main

    argv = tiny_run_argv(config_name, model, data, run_dir, "run.record_advantages=true", *extra, reward=reward)
    assert main(argv) == 0
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert 1 in rows, f"no step 1 in {run_dir / 'metrics.jsonl'}"
    return rows


def _records(run_dir: Path) -> list[dict]:
    from verl_agrae.testing.records import load_records

    return load_records(run_dir / "attempts" / "attempt-01" / "advantages")


def _groups(rec: dict) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    mask = rec["response_mask"].bool()
    scores = (rec["token_level_rewards"] * mask).sum(-1)
    rows: dict[str, list[int]] = defaultdict(list)
    for i, uid in enumerate(rec["index"]):
        rows[uid].append(i)
    return scores, mask, list(rows.values())


def _grpo_by_hand(rec: dict, norm_by_std: bool) -> torch.Tensor:
    scores, mask, groups = _groups(rec)
    adv = torch.zeros_like(scores)
    for rows in groups:
        r = scores[rows].double()
        centred = r - r.mean() if len(rows) > 1 else torch.zeros_like(r)
        if norm_by_std and len(rows) > 1:
            centred = centred / (r.std() + EPS)
        adv[rows] = centred.to(adv.dtype)
    return adv[:, None] * mask


def _agrae_expected(rec: dict, dropped: list[float] | None = None) -> torch.Tensor:
    """Our pure estimator on the record's batch; ``dropped``: success rates of groups outside the batch."""
    from verl_agrae.advantage import compute_agrae_outcome_advantage
    from verl_agrae.config import AgraeConfig

    advantages, _ = compute_agrae_outcome_advantage(
        rec["token_level_rewards"],
        rec["response_mask"],
        rec["index"],
        AgraeConfig(**rec["options"]),
        extra_group_success=dropped,
    )
    return advantages


def _common_checks(rows: dict, rec: dict) -> None:
    mask = rec["response_mask"].bool()
    assert rows[1]["critic/advantages/mean"] == pytest.approx(float(rec["advantages"][mask].mean()), abs=1e-5)
    assert rows[1]["training/rollout_probs_diff_max"] < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config_name", "norm_by_std"),
    [("grpo", True), ("drgrpo", False)],
)
def test_grpo_and_drgrpo_train_with_their_advantage(tiny_model_dir, data_dir, tmp_path, config_name, norm_by_std):
    run_dir = tmp_path / config_name
    rows = _run(config_name, tiny_model_dir, data_dir, run_dir)
    (rec,) = _records(run_dir)
    # The plain methods run `agrae` with both terms off; what verl trained on is GRPO's / Dr.GRPO's formula.
    assert (
        rec["estimator"] == "agrae"
        and not rec["options"]["difficulty_shift"]
        and not rec["options"]["suppress_correct"]
    )
    torch.testing.assert_close(rec["advantages"], _grpo_by_hand(rec, norm_by_std), rtol=1e-5, atol=1e-5)
    _common_checks(rows, rec)
    assert rows[1]["agrae/adv_balance"] == pytest.approx(0.0, abs=1e-5)  # symmetric: the same live diagnostics
    assert ("actor/kl_loss" in rows[1]) is (config_name == "grpo")  # Dr.GRPO: no KL term


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["grpo_agrae", "drgrpo_agrae"])
def test_agrae_configs_train_with_agrae_and_log_its_metrics(tiny_model_dir, data_dir, tmp_path, config_name):
    run_dir = tmp_path / config_name
    rows = _run(config_name, tiny_model_dir, data_dir, run_dir)
    (rec,) = _records(run_dir)
    assert rec["estimator"] == "agrae"
    assert rec["options"]["norm_adv_by_std_in_grpo"] is (config_name == "grpo_agrae")
    torch.testing.assert_close(rec["advantages"], _agrae_expected(rec), rtol=1e-5, atol=1e-6)
    _common_checks(rows, rec)
    assert rows[1]["agrae/mu"] == pytest.approx(rec["mu"], abs=1e-6)
    assert rows[1]["agrae/mu"] == pytest.approx(rows[1]["critic/score/mean"], abs=1e-6)  # no filtering


def _generated_groups(log_path: Path) -> list[list[bool]]:
    groups: dict[int, list[bool]] = defaultdict(list)
    for line in log_path.read_text().splitlines():
        call = json.loads(line)
        groups[call["index"]].append(call["acc"])
    return list(groups.values())


def _dapo_run(config_name: str, model, data, tmp_path: Path) -> tuple[dict, dict, list[list[bool]]]:
    """One step of a DAPO config with all-solved groups guaranteed; returns (metrics rows, record, groups)."""
    run_dir = tmp_path / config_name
    log = tmp_path / "rewards.jsonl"
    rows = _run(
        config_name,
        model,
        data,
        run_dir,
        "reward.reward_kwargs.overlong_buffer_cfg.len=4",
        f"+reward.custom_reward_function.reward_kwargs.log_path={log}",
        reward="even_answer_or_parity_reward",
    )
    (rec,) = _records(run_dir)
    return rows, rec, _generated_groups(log)


@pytest.mark.slow
def test_dapo_trains_with_dynamic_sampling(tiny_model_dir, data_dir, tmp_path):
    rows, rec, generated = _dapo_run("dapo", tiny_model_dir, data_dir, tmp_path)
    _, _, groups = _groups(rec)
    assert len(groups) == 2  # data.train_batch_size groups, refilled after filtering
    # (Kept groups mix `acc`, the filter metric; their scores may not mix: the overlong penalty can take a
    # correct response's +1 down to 0 or below.)
    uniform = [g for g in generated if all(g) or not any(g)]
    assert uniform, "no all-solved group was generated; the reward should make even answers all-solved"
    evicted = sum(v for k, v in rows[1].items() if k.endswith("filter_groups/evicted_samples"))
    assert evicted == len(uniform)
    torch.testing.assert_close(rec["advantages"], _grpo_by_hand(rec, True), rtol=1e-5, atol=1e-5)


def test_dapo_agrae_mu_counts_the_groups_dynamic_sampling_dropped(tiny_model_dir, data_dir, tmp_path):
    rows, rec, generated = _dapo_run("dapo_agrae", tiny_model_dir, data_dir, tmp_path)
    scores, _, groups = _groups(rec)
    kept = [float((scores[g] > 0).float().mean()) for g in groups]  # success = score > threshold 0
    dropped = [float(all(g)) for g in generated if all(g) or not any(g)]
    assert any(dropped), "no all-solved group was dropped"
    # mu over every generated group that had a say: the kept ones and the dropped uniform ones. Surplus
    # mixed groups (generated beyond the batch and discarded unread) do not count (integration/trainers.py).
    expected_mu = (sum(kept) + sum(dropped)) / (len(kept) + len(dropped))
    mu_batch = sum(kept) / len(kept)
    assert rec["mu"] == pytest.approx(expected_mu, abs=1e-6)
    assert rec["mu_batch"] == pytest.approx(mu_batch, abs=1e-6)
    assert rec["mu"] != pytest.approx(rec["mu_batch"], abs=1e-3)
    assert rows[1]["agrae/mu"] == pytest.approx(expected_mu, abs=1e-6)
    assert rows[1]["agrae/mu_batch"] == pytest.approx(mu_batch, abs=1e-6)
    # The trained advantages are the estimator's with the pre-filter mu, and differ from the post-filter ones.
    assert sorted(rec["extra_group_success"]) == sorted(dropped) and rec["mu_source"] == "generated"
    torch.testing.assert_close(rec["advantages"], _agrae_expected(rec, dropped), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rec["advantages"], _agrae_expected(rec), atol=1e-4)
