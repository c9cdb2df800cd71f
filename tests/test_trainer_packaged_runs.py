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

    # bypass_mode=False: verl's separate old-log-prob pass measures the rollout-vs-actor gap (training/
    # rollout_probs_diff_*) for every packaged config, the evidence that the CPU default (bypass) is exact.
    argv = tiny_run_argv(
        config_name,
        model,
        data,
        run_dir,
        "run.record_advantages=true",
        "algorithm.rollout_correction.bypass_mode=False",
        *extra,
        reward=reward,
    )
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


def _agrae_expected(rec: dict, dropped: list[float] | None = None, acc: torch.Tensor | None = None) -> torch.Tensor:
    """Our pure estimator on the record's batch; ``dropped``: success rates of groups outside the batch; ``acc``:
    the rows' acc."""
    from verl_agrae.advantage import compute_agrae_outcome_advantage
    from verl_agrae.config import AgraeConfig

    advantages, _ = compute_agrae_outcome_advantage(
        rec["token_level_rewards"],
        rec["response_mask"],
        rec["index"],
        AgraeConfig(**rec["options"]),
        extra_group_success=dropped,
        acc=acc,
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


def test_dapo_agrae_mu_is_the_mean_success_of_every_generated_group(tiny_model_dir, data_dir, tmp_path):
    """mu counts the batch, the groups dynamic sampling dropped and the surplus mixed groups verl discarded, each by
    its responses' `acc` (a correct answer cut at the length limit scores 0 under DAPO's overlong shaping but
    succeeded). The reward log rebuilds every generated group independently of verl's and our accounting."""
    rows, rec, generated = _dapo_run("dapo_agrae", tiny_model_dir, data_dir, tmp_path)
    scores, _, groups = _groups(rec)
    assert rows[1]["agrae/groups_surplus"] > 0, "no surplus group: the test would not show they are counted"
    assert rows[1]["agrae/groups_surplus"] == rows[1]["training/filter_groups/discarded_surplus_samples"]
    assert rows[1]["agrae/groups_dropped"] > 0
    every = [sum(g) / len(g) for g in generated]
    assert len(every) == len(groups) + rows[1]["agrae/groups_dropped"] + rows[1]["agrae/groups_surplus"]
    assert rows[1]["agrae/prompts_generated"] == len(every)
    expected_mu = sum(every) / len(every)
    assert rec["mu"] == pytest.approx(expected_mu, abs=1e-9) and rec["mu_source"] == "generated"
    assert rows[1]["agrae/mu"] == pytest.approx(expected_mu, abs=1e-6)
    # The batch's groups and the left-out ones are exactly the generated groups, by their success rates.
    batch_p = [float(rec["acc"][g].mean()) for g in groups]
    assert sorted(batch_p + rec["extra_group_success"]) == pytest.approx(sorted(every), abs=1e-9)
    assert rec["mu_batch"] == pytest.approx(sum(batch_p) / len(batch_p), abs=1e-9)
    # Success is acc, also where the overlong penalty took a correct answer's score to 0 or below.
    truncated_correct = (rec["acc"] == 1) & (scores <= 0)
    assert truncated_correct.any(), "no correct response at the length limit: the acc rule is not exercised"
    assert (rec["success"][truncated_correct] == 1).all()
    torch.testing.assert_close(rec["success"], rec["acc"].to(rec["success"].dtype))
    # The trained advantages are the estimator's with that mu, and differ from the batch-only ones.
    torch.testing.assert_close(
        rec["advantages"], _agrae_expected(rec, rec["extra_group_success"], acc=rec["acc"]), rtol=1e-5, atol=1e-6
    )
    assert not torch.allclose(rec["advantages"], _agrae_expected(rec, acc=rec["acc"]), atol=1e-4)


CAP = ["algorithm.filter_groups.max_num_gen_batches=2"]  # 2 x data.train_batch_size (2) = 4 prompts per step


def test_generation_cap_train_fills_the_batch_with_filtered_groups(tiny_model_dir, data_dir, tmp_path):
    """Every group all-solved: dynamic sampling alone would consume the dataset. At the cap (4 prompts) with
    on_generation_cap=train, the buffer stops evicting, generates only what the batch lacks and trains."""
    run_dir = tmp_path / "run"
    rows = _run(
        "dapo_agrae",
        tiny_model_dir,
        data_dir,
        run_dir,
        *CAP,
        "trainer.v1.sampler.on_generation_cap=train",
        "reward.reward_kwargs.overlong_buffer_cfg.len=4",
        reward="always_correct_reward",
    )
    (rec,) = _records(run_dir)
    assert rows[1]["agrae/generation_cap_reached"] == 1.0
    # 2 initial prompts dropped, the refill of 4 cut to the 2 the cap allows: 4 prompts, all in the cap.
    assert rows[1]["agrae/prompts_generated"] == 4.0
    assert rows[1]["agrae/groups_dropped"] == 2.0
    _, _, groups = _groups(rec)
    assert len(groups) == 2  # a full batch, of all-solved groups
    assert rec["mu"] == rec["mu_batch"] == 1.0
    assert torch.count_nonzero(rec["advantages"]) == 0  # filtered groups carry no gradient


@pytest.mark.slow
def test_generation_cap_error_stops_the_run_naming_the_keys(tiny_model_dir, data_dir, tmp_path, capsys):
    from verl_agrae.trainer.main import main

    argv = tiny_run_argv(
        "dapo_agrae",
        tiny_model_dir,
        data_dir,
        tmp_path / "run",
        *CAP,
        "reward.reward_kwargs.overlong_buffer_cfg.len=4",
        reward="always_correct_reward",
    )
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "GenerationCapReached" in err and "reached its generation cap at step 1: 4 prompts generated" in err
    assert "algorithm.filter_groups.max_num_gen_batches" in err and "on_generation_cap=train" in err
