"""The paper's example scripts: the commands they build, and that every config composes and passes verl's
own validation (DRY_RUN), without launching anything."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
METHODS = ["grpo", "grpo+agrae", "drgrpo", "drgrpo+agrae", "dapo", "dapo+agrae"]
SCRIPTS = {
    "math/qwen2.5-math-7b.sh": ("Qwen/Qwen2.5-Math-7B", 1.0),
    "math/r1-distill-qwen-7b.sh": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 1.0),
    "math/llama-3.2-3b-instruct.sh": ("meta-llama/Llama-3.2-3B-Instruct", 1.0),
    "vl/qwen2.5-vl-3b-geometry3k.sh": ("Qwen/Qwen2.5-VL-3B-Instruct", 0.5),
}


def _dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "EXP", "LAUNCHER", "DATA_DIR")}
    full_env.update({"DRY_RUN": "command", "DATA_DIR": "/data", **env})
    return subprocess.run(
        ["bash", str(EXAMPLES / script), *args], env=full_env, capture_output=True, text=True, timeout=60
    )


def _command(script: str, *args: str, **env: str) -> list[str]:
    res = _dry_run(script, *args, **env)
    assert res.returncode == 0, res.stderr
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("command: ")]
    return shlex.split(line.removeprefix("command: "))


def _overrides(cmd: list[str], method: str) -> dict[str, str]:
    """Overrides as Hydra applies them: the last value of a key wins."""
    # The method's semantics come from the packaged config of the same name (checked composed, below).
    assert cmd[:4] == ["verl-agrae", "train", "--config-name", method.replace("+", "_")], cmd[:4]
    return dict(arg.split("=", 1) for arg in cmd[4:])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_command_has_paper_settings(script, method):
    model, alpha = SCRIPTS[script]
    keys = [arg.split("=", 1)[0] for arg in _command(script, method)[4:]]
    assert len(keys) == len(set(keys)), "a script sets a key twice"
    ov = _overrides(_command(script, method, "trainer.save_freq=3"), method)
    assert ov.get("algorithm.agrae.alpha") == (str(alpha) if method.endswith("+agrae") else None)
    assert ov["actor_rollout_ref.model.path"] == model
    assert ov["actor_rollout_ref.actor.optim.lr"] == "1e-6"
    assert ov["actor_rollout_ref.rollout.n"] == "8"
    assert ov["trainer.total_epochs"] == "20"
    assert ov["trainer.n_gpus_per_node"] == "8" and ov["trainer.nnodes"] == "1"
    if script.startswith("math/"):
        assert ov["data.train_batch_size"] == "1024" and ov["data.max_response_length"] == "3072"
        assert ov["data.train_files"] == "/data/math/train.parquet"
        sets = ["math500/test", "aime2024/test", "aime2025/test", "amc23/test"]
        assert ov["data.val_files"] == "[" + ",".join(f"/data/{v}.parquet" for v in sets) + "]"
    else:
        assert ov["data.train_files"] == "/data/geometry3k/train.parquet"
        assert ov["data.image_key"] == "images" and ov["data.train_batch_size"] == "512"
    assert ov["trainer.save_freq"] == "3"  # extra arguments come last and win
    default = _overrides(_command(script, method), method)
    assert default["trainer.save_freq"] == "5"  # a crash loses at most 5 steps (docs/slurm.md)
    assert default["trainer.max_actor_ckpt_to_keep"] == "2" and default["trainer.max_critic_ckpt_to_keep"] == "2"
    assert ov["trainer.experiment_name"].endswith(method.replace("+", "_"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_authors_settings_switch(script, method):
    """SETTINGS=authors: the authors' choices (entropy bonus, KL loss at 0 in GRPO, system prompt data, validation
    every 7 steps on MATH test + AIME + AMC, Geometry3K's format reward); the fixes stay (packaged configs)."""
    ours = _overrides(_command(script, method), method)
    ov = _overrides(_command(script, method, SETTINGS="authors"), method)
    assert ov["actor_rollout_ref.actor.entropy_coeff"] == "0.001" and ov["trainer.test_freq"] == "7"
    assert "actor_rollout_ref.actor.entropy_coeff" not in ours and ours["trainer.test_freq"] == "10"
    if method.startswith("grpo"):
        assert (
            ov["actor_rollout_ref.actor.use_kl_loss"] == "True" and ov["actor_rollout_ref.actor.kl_loss_coef"] == "0.0"
        )
    else:
        assert "actor_rollout_ref.actor.kl_loss_coef" not in ov  # Dr.GRPO and DAPO keep no KL term
    assert ov["data.train_files"].startswith("/data/authors/")  # prepared with the system message
    if script.startswith("math/"):
        sets = ["math/test", "aime2024/test", "aime2025/test", "amc23/test"]
        assert ov["data.val_files"] == "[" + ",".join(f"/data/authors/{v}.parquet" for v in sets) + "]"
    else:
        assert ov["reward.custom_reward_function.name"] == "accuracy_and_format_score"
        assert ov["+reward.custom_reward_function.reward_kwargs.format_weight"] == "0.1"
    assert "reward.custom_reward_function.name" not in ours


def test_unknown_settings_are_refused():
    res = _dry_run("math/qwen2.5-math-7b.sh", "grpo", SETTINGS="paper")
    assert res.returncode == 2 and "SETTINGS must be ours or authors" in res.stderr


def test_every_script_states_its_gpus():
    for script in SCRIPTS:
        assert "# GPUs: 8" in (EXAMPLES / script).read_text()


def test_bad_method_prints_usage():
    res = _dry_run("math/qwen2.5-math-7b.sh", "ppo")
    assert res.returncode == 2 and "usage:" in res.stderr and "dapo+agrae" in res.stderr


def test_slurm_launcher_submits_train_sbatch():
    cmd = _command("math/qwen2.5-math-7b.sh", "grpo+agrae", LAUNCHER="slurm", NNODES="2", SBATCH_ARGS="-p gpu")
    assert cmd[:6] == ["sbatch", "--nodes=2", "--gpus-per-node=8", "--job-name=qwen2.5-math-7b_grpo_agrae", "-p", "gpu"]
    assert cmd[6:8] == [str(ROOT / "slurm" / "train.sbatch"), "grpo_agrae"]
    # The job derives nnodes / GPUs from its allocation.
    assert not any(a.startswith(("trainer.nnodes=", "trainer.n_gpus_per_node=")) for a in cmd)
    assert "algorithm.agrae.alpha=1.0" in cmd


@pytest.fixture(scope="module")
def compose_module():
    pytest.importorskip("verl_agrae.trainer.main")
    spec = importlib.util.spec_from_file_location("agrae_compose_config", EXAMPLES / "compose_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every method on the headline script, and every other script with the richest method (the method
# blocks are shared, so this covers every key of every script); the full 4 x 6 product is the slow test.
FAST_COMBOS = [("math/qwen2.5-math-7b.sh", m, "ours") for m in METHODS] + [
    (script, "dapo+agrae", "ours") for script in SCRIPTS if script != "math/qwen2.5-math-7b.sh"
]
# SETTINGS=authors: GRPO + A-GRAE (KL at 0) on a math script, and the multimodal one (format reward).
AUTHORS_COMBOS = [
    ("math/qwen2.5-math-7b.sh", "grpo+agrae", "authors"),
    ("vl/qwen2.5-vl-3b-geometry3k.sh", "grpo+agrae", "authors"),
]


@pytest.mark.parametrize(
    "combos",
    [
        pytest.param(FAST_COMBOS + AUTHORS_COMBOS, id="each-script-and-method"),
        pytest.param(
            [(s, m, settings) for s in SCRIPTS for m in METHODS for settings in ("ours", "authors")],
            id="all-48",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_example_configs_compose_and_validate(compose_module, combos):
    """Settings through the same composition as `verl-agrae train`, then verl's own validate_config."""
    for script, method, settings in combos:
        alpha = SCRIPTS[script][1]
        cmd = _command(script, method, SETTINGS=settings)
        cfg = compose_module.compose_and_validate(cmd[3], cmd[4:])
        where = f"{script} {method} SETTINGS={settings}"
        agrae = method.endswith("+agrae")
        # every method runs `agrae`; the plain ones with both terms off (= verl's `grpo`, with the same diagnostics)
        assert cfg.algorithm.adv_estimator == "agrae", where
        assert cfg.algorithm.agrae.difficulty_shift is agrae and cfg.algorithm.agrae.suppress_correct is agrae, where
        if agrae:
            assert cfg.algorithm.agrae.alpha == alpha, where
            assert cfg.algorithm.agrae.success_threshold == (0.0 if method == "dapo+agrae" else None), where
        actor = cfg.actor_rollout_ref.actor
        assert cfg.algorithm.norm_adv_by_std_in_grpo is (not method.startswith("drgrpo")), where
        assert actor.loss_agg_mode == ("seq-mean-token-sum-norm" if method.startswith("drgrpo") else "token-mean")
        assert actor.use_kl_loss is method.startswith("grpo"), where
        assert actor.kl_loss_coef == (0.0 if settings == "authors" else 0.001) or not actor.use_kl_loss, where
        assert actor.entropy_coeff == (0.001 if settings == "authors" else 0.0), where
        if method.startswith("drgrpo"):
            assert actor.loss_scale_factor == cfg.data.max_response_length, where
        assert actor.optim.lr == 1e-6 and cfg.actor_rollout_ref.rollout.n == 8 and cfg.trainer.total_epochs == 20
        if method.startswith("dapo"):
            assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0), where
            assert cfg.algorithm.filter_groups.enable and cfg.algorithm.filter_groups.metric == "acc", where
            assert cfg.reward.reward_manager.name == "dapo", where
            assert cfg.reward.reward_kwargs.overlong_buffer_cfg.enable, where
            assert cfg.reward.reward_kwargs.max_resp_len == cfg.data.max_response_length, where
        else:
            assert not cfg.algorithm.filter_groups.enable, where
            assert cfg.reward.reward_manager.name == "naive", where
        if settings == "authors" and script.startswith("vl/"):
            assert cfg.reward.custom_reward_function.path == "pkg://verl_agrae.reward.format_reward", where
            assert cfg.reward.custom_reward_function.reward_kwargs.format_weight == 0.1, where
        else:
            assert cfg.reward.custom_reward_function.path == "pkg://verl_agrae.reward", where


def test_bad_override_is_refused(compose_module, capsys):
    assert compose_module.main(["--", "algorithm.no_such_key=1"]) == 1
    assert "no_such_key" in capsys.readouterr().err


def test_pass_at_256_sweep_loads():
    sweep_mod = pytest.importorskip("verl_agrae.eval.sweep")
    cfg = sweep_mod.load_sweep(EXAMPLES / "sweeps" / "pass_at_256.yaml")
    assert sorted(b.name for b in cfg.benchmarks) == ["aime2025", "amc23", "math500"]
    assert "base" in [r.name for r in cfg.runs] and len(cfg.runs) >= 2
    (samp,) = cfg.sampling
    assert (samp.n, samp.temperature, samp.top_p, samp.max_tokens) == (256, 0.6, 0.95, 4096)
    assert len(cfg.cells()) == len(cfg.runs) * 3


def test_prepare_data_converts_what_exists(tmp_path):
    raw = tmp_path / "raw"
    (raw / "math500").mkdir(parents=True)
    (raw / "math500" / "test.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    (raw / "amc23.jsonl").write_text(json.dumps({"question": "2+2?", "answer": 4.0}) + "\n")
    verl_agrae = Path(sys.executable).parent / "verl-agrae"
    env = {**os.environ, "RAW_DIR": str(raw), "DATA_DIR": str(tmp_path / "data"), "VERL_AGRAE": str(verl_agrae)}
    res = subprocess.run(
        ["bash", str(EXAMPLES / "prepare_data.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "data" / "math500" / "test.parquet").is_file()
    assert (tmp_path / "data" / "amc23" / "test.parquet").is_file()
    assert "math500: read 1 rows, wrote 1" in res.stdout
    assert "skip aime2025 (test)" in res.stderr and "skip geometry3k (train)" in res.stderr

    authors = subprocess.run(
        ["bash", str(EXAMPLES / "prepare_data.sh")],
        env={**env, "SETTINGS": "authors"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert authors.returncode == 0, authors.stderr
    import pandas as pd

    (prompt,) = pd.read_parquet(tmp_path / "data" / "authors" / "math500" / "test.parquet")["prompt"]
    assert prompt[0]["role"] == "system" and prompt[0]["content"] == "You are a helpful assistant."
    (ours,) = pd.read_parquet(tmp_path / "data" / "math500" / "test.parquet")["prompt"]
    assert [m["role"] for m in ours] == ["user"]


@pytest.mark.slow
def test_dry_run_end_to_end_prints_config():
    """The real DRY_RUN=1 path: bash -> compose_config.py in a fresh interpreter (slow: imports verl)."""
    res = _dry_run("math/qwen2.5-math-7b.sh", "dapo+agrae", DRY_RUN="1", PYTHON=sys.executable)
    assert res.returncode == 0, res.stderr
    assert "adv_estimator: agrae" in res.stdout and "success_threshold: 0.0" in res.stdout
    assert "# composed and validated with verl's validate_config" in res.stdout
