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
  - {name: grpo_agrae, config: cpu_demo, overrides: [algorithm.agrae.alpha=0.5]}
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
    assert [r.name for r in runs] == ["grpo-seed0", "grpo_agrae-seed0", "grpo-seed7", "grpo_agrae-seed7"]
    last = runs[-1]
    assert last.argv[:3] == ("--config-name", "cpu_demo", f"run.dir={Path('out') / 'runs' / 'grpo_agrae-seed7'}")
    assert "data.seed=7" in last.argv and "actor_rollout_ref.rollout.seed=7" in last.argv
    # common overrides first, the method's own last (they win)
    assert last.argv[-2:] == ("trainer.total_training_steps=2", "algorithm.agrae.alpha=0.5")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("baseline: grpo", "baseline: ppo"), "baseline 'ppo' is not one of the methods"),
        (lambda t: t.replace("seeds: [0, 7]", "seeds: [1, 1]"), "duplicate seeds"),
        (lambda t: t + "extra: 1\n", "unknown key"),
        (lambda t: t.replace("grpo_agrae", "grpo"), "duplicate method name"),
        # names label the evaluation's cell directories (<run>__<benchmark>__<sampling>)
        (lambda t: t.replace("name: grpo_agrae", "name: grpo+agrae"), "method name 'grpo\\+agrae' must match"),
        (lambda t: t.replace("name: grpo_agrae", "name: a__b"), "must match .* not contain '__'"),
        (lambda t: t.replace("name: grpo_agrae", "name: base"), "'base' is the base model's row"),
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


def _byte_parity_grader(solutions, ground_truths, data_sources):
    """A stand-in grader that spreads correct counts over problems: a response is right when its byte sum is even."""
    out = []
    for text in solutions:
        ok = sum(text.encode()) % 2 == 0
        out.append({"score": float(ok), "acc": ok, "pred": text[-8:], "timeout": False})
    return out


def _trained_run(run_dir: Path, model: Path, metrics: list[dict]) -> None:
    """What `verl-agrae train` leaves behind, with ``model`` as the final checkpoint's Hugging Face weights."""
    import json
    import shutil

    shutil.copytree(model, run_dir / "checkpoints" / "global_step_2" / "actor" / "huggingface")
    (run_dir / "summary.json").write_text(json.dumps({"exit_code": 0, "checkpoint_step": 2}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_eval_and_report_from_trained_checkpoints(tmp_path, tiny_model_dir, lively_model_dir, monkeypatch):
    """Checkpoints in place (training skipped as finished): the sweep evaluates base + every run, and the report's
    Pass@k and paired differences are the per-(seed, problem) unbiased estimator averaged by hand."""
    import json
    from math import comb

    from verl_agrae.compare import main
    from verl_agrae.eval import cell as cell_mod
    from verl_agrae.eval.cell import load_cell_results
    from verl_agrae.eval.sweep import load_sweep

    monkeypatch.setattr(cell_mod, "_default_grader", lambda *a, **k: _byte_parity_grader)
    n, ks, seeds = 4, [1, 2, 4], [0, 1]
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"""\
output_dir: {tmp_path / "out"}
base_model: {tiny_model_dir}
methods:
  - {{name: a, config: cpu}}
  - {{name: b, config: cpu}}
baseline: a
seeds: {seeds}
evaluation:
  benchmark: {{name: arith, preset: arithmetic, limit: 6, n_train: 8, n_val: 16}}
  sampling: {{name: s, n: {n}, temperature: 1.0, max_tokens: 6, seed: 3}}
  generation: {{backend: hf, shard_size: 3, batch_size: 8, dtype: float32}}
  grading: {{timeout: 5, num_workers: 1}}
report: {{ks: {ks}, num_boot: 300}}
"""
    )
    spec = load_compare(exp)
    for run in spec.train_runs():
        # method b's entropy only as actor/entropy_loss (bypass mode): the report's curve must still find it
        entropy_key = "actor/entropy" if run.method == "a" else "actor/entropy_loss"
        rows = [{"step": s, "critic/score/mean": 0.1 * s, entropy_key: 1.0 / s, "agrae/mu": 0.2} for s in (1, 2)]
        _trained_run(run.run_dir, lively_model_dir if run.method == "b" else tiny_model_dir, rows)

    assert main([str(exp)]) == 0  # train (all finished: skipped), evaluate, report

    sweep = load_sweep(spec.sweep_path)
    (bench,), (samp,) = sweep.benchmarks, sweep.sampling
    counts = {r.name: load_cell_results(sweep.cell_ref(r, bench, samp).cell_dir).c for r in sweep.runs}
    assert set(counts) == {"base", "a-seed0", "b-seed0", "a-seed1", "b-seed1"}

    def pass_k(c: int, k: int) -> float:
        return 1.0 - comb(n - c, k) / comb(n, k)

    report = json.loads((spec.report_dir / "compare.json").read_text())
    assert report["ks"] == ks
    for k in ks:
        expected = {
            m: np.mean([[pass_k(int(c), k) for c in counts[f"{m}-seed{s}"]] for s in seeds]) for m in ("a", "b")
        }
        expected["base"] = np.mean([pass_k(int(c), k) for c in counts["base"]])
        for m, value in expected.items():
            cell = report["passk"][m][str(k)]
            assert cell["value"] == pytest.approx(value, abs=1e-12)
            assert cell["low"] <= cell["value"] + 1e-12 and cell["value"] <= cell["high"] + 1e-12
        diff = report["diff"]["b"][str(k)]
        assert diff["value"] == pytest.approx(expected["b"] - expected["a"], abs=1e-12)
    assert "a" not in report["diff"] and "base" not in report["diff"]
    assert any(counts["b-seed0"] != counts["a-seed0"])  # different models: the difference is not trivially 0

    md = (spec.report_dir / "compare.md").read_text()
    assert "| k | base | a | b |" in md and "Paired differences (method - a" in md
    for png in ("passk.png", "training.png"):
        assert (spec.report_dir / png).stat().st_size > 0

    from verl_agrae.compare import _training_curves

    curves = _training_curves(spec)
    assert curves["b"]["entropy"] == [[(1, 1.0), (2, 0.5)]] * 2 and curves["a"]["entropy"] == [[(1, 1.0), (2, 0.5)]] * 2


def test_cli_prints_what_the_slurm_submission_needs(tmp_path, capsys):
    """slurm/submit_compare.sh reads the experiment through these: the run count, each run's train.sbatch
    arguments (CONFIG first, run.dir among the overrides) and the sweep path; a bad index names the range."""
    from verl_agrae.compare import main

    spec = _spec(tmp_path)
    exp = str(spec.path)
    assert main([exp, "--num-train"]) == 0
    assert capsys.readouterr().out.split() == ["4"]
    assert main([exp, "--train-args", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == list(spec.train_runs()[3].argv[1:]) and lines[0] == "cpu_demo"
    assert f"run.dir={Path('out') / 'runs' / 'grpo_agrae-seed7'}" in lines
    assert main([exp, "--sweep-path"]) == 0
    assert capsys.readouterr().out.strip() == str(Path("out") / "sweep.yaml")
    assert main([exp, "--train-args", "4"]) == 2
    assert "index 4 out of range: the experiment has runs 0..3" in capsys.readouterr().err
    assert main([exp, "--write-sweep"]) == 2  # nothing trained yet
    assert "no checkpoint" in capsys.readouterr().err
    assert main([exp, "--report"]) == 2  # no sweep file: nothing was evaluated (what SLURM's report job meets)
    assert "no evaluation to report" in capsys.readouterr().err
