"""`verl-agrae compare`: the experiment file, the training plan, and the statistics of the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verl_agrae.compare import bootstrap_over_seeds_and_problems, load_compare, method_tables

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
output_dir: out
base_model: demo
methods:
  - {name: grpo, config: cpu_demo_grpo}
  - {name: grpo+agrae, config: cpu_demo, overrides: [algorithm.agrae.alpha=0.5]}
baseline: grpo
seeds: [0, 7]
overrides: [trainer.total_training_steps=2]
evaluation:
  benchmark: {name: arithmetic, preset: arithmetic, task: cpu_demo, split: val}
  sampling: {n: 4}
"""


def _spec(tmp_path, text=GOOD):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return load_compare(path)


def test_every_method_trains_with_every_seed_on_the_same_data_order_and_sampling_seed(tmp_path):
    runs = _spec(tmp_path).train_runs()
    assert [r.name for r in runs] == ["grpo__seed0", "grpo+agrae__seed0", "grpo__seed7", "grpo+agrae__seed7"]
    last = runs[-1]
    assert last.argv[:3] == ("--config-name", "cpu_demo", f"run.dir={Path('out') / 'runs' / 'grpo+agrae__seed7'}")
    assert "data.seed=7" in last.argv and "actor_rollout_ref.rollout.seed=7" in last.argv
    # common overrides first, the method's own last (they win)
    assert last.argv[-2:] == ("trainer.total_training_steps=2", "algorithm.agrae.alpha=0.5")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("baseline: grpo", "baseline: ppo"), "baseline 'ppo' is not one of the methods"),
        (lambda t: t.replace("seeds: [0, 7]", "seeds: [1, 1]"), "duplicate seeds"),
        (lambda t: t + "extra: 1\n", "unknown key"),
        (lambda t: t.replace("grpo+agrae", "grpo"), "duplicate method names"),
        (
            lambda t: t.replace("  - {name: grpo, config", "  - {name: grpo, confg"),
            "methods\\[0\\] needs name and config",
        ),
        (lambda t: t.replace("methods:", "methods: [\n"), "not valid YAML: line"),
    ],
)
def test_bad_experiment_files_name_the_problem(tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        _spec(tmp_path, edit(GOOD))


def test_the_packaged_cpu_experiment_loads():
    spec = load_compare(ROOT / "examples" / "compare" / "cpu_demo.yaml")
    assert [m.config for m in spec.methods] == ["cpu_demo_grpo", "cpu_demo"] and len(spec.seeds) == 3
    assert spec.evaluation["benchmark"]["task"] == "cpu_demo"


def test_bootstrap_resamples_seeds_and_problems():
    # One problem, two seeds with values 0 and 1: replicate means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    mean, low, high = bootstrap_over_seeds_and_problems(np.array([[[0.0]], [[1.0]]]), num_boot=4000)
    assert mean.tolist() == [0.5] and low.tolist() == [0.0] and high.tolist() == [1.0]
    # Identical everywhere: no spread at all.
    mean, low, high = bootstrap_over_seeds_and_problems(np.full((3, 2, 5), 0.25))
    assert np.allclose([mean, low, high], 0.25)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_over_seeds_and_problems(np.array([[[np.nan]]]))


def test_method_tables_by_hand():
    # n = 4 samples; seeds x problems correct counts.
    correct = {"base": np.array([[1, 0]]), "grpo": np.array([[4, 0], [2, 2]]), "agrae": np.array([[4, 1], [2, 2]])}
    t = method_tables(correct, 4, [1, 2, 4], "grpo", num_boot=500)
    # Pass@1 = c / n; Pass@2 = 1 - C(n - c, 2) / C(n, 2); Pass@4 = 1[c > 0].
    assert t["passk"]["grpo"][1]["value"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert t["passk"]["grpo"][2]["value"] == pytest.approx((1 + 0 + 5 / 6 + 5 / 6) / 4)
    assert t["passk"]["agrae"][4]["value"] == pytest.approx(1.0)
    assert t["passk"]["base"][1]["value"] == pytest.approx(0.125)
    # agrae - grpo differs only on seed 0, problem 1 (c 1 vs 0): Pass@1 +0.25 there, +0.0625 on average.
    assert t["diff"]["agrae"][1]["value"] == pytest.approx(0.25 / 4)
    assert t["diff"]["agrae"][4]["value"] == pytest.approx(1 / 4)
    assert t["diff"]["agrae"][1]["low"] <= 0.0625 <= t["diff"]["agrae"][1]["high"]
    assert set(t["diff"]) == {"agrae"}  # neither the baseline nor the base model is compared with itself
