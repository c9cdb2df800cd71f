"""Evaluation datasets, model resolution and atomic shard files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_agrae.atomic import atomic_write_text
from verl_agrae.eval.datasets import BenchmarkSpec, EvalDataError, load_benchmark, load_rl_parquet
from verl_agrae.eval.sampling import derive_seed, resolve_model
from verl_agrae.eval.shards import (
    clean_partial,
    ensure_meta,
    pending_ranges,
    shard_name,
    shard_ranges,
)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_missing_preset_file_names_paths_and_columns(tmp_path):
    spec = BenchmarkSpec.from_dict({"name": "aime2025"})
    with pytest.raises(EvalDataError) as err:
        load_benchmark(spec, cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    msg = str(err.value)
    assert str(tmp_path / "data" / "aime2025.jsonl") in msg
    assert "'answer'" in msg and "Nothing is downloaded" in msg


def test_presets_read_local_files_with_their_columns(tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "gsm8k" / "test.jsonl", [{"question": "2+2?", "answer": "2+2=4\n#### 4"}])
    write_jsonl(data / "aime2025.jsonl", [{"problem": "Find x.", "answer": 70}, {"problem": "Find y.", "answer": "5"}])
    write_jsonl(
        data / "math500" / "test.jsonl",
        [{"problem": "What is 1/2+1/2?", "solution": "It is $\\boxed{1}$.", "answer": "1", "unique_id": "t/1"}],
    )
    gsm = load_benchmark(BenchmarkSpec.from_dict({"name": "gsm8k"}), cache_dir=tmp_path / "c", data_dir=data)
    assert [(p.ground_truth, p.data_source) for p in gsm] == [("4", "gsm8k")]
    assert gsm[0].prompt[-1]["role"] == "user" and "2+2?" in gsm[0].prompt[-1]["content"]
    aime = load_benchmark(
        BenchmarkSpec.from_dict({"name": "aime2025", "limit": 1}), cache_dir=tmp_path / "c", data_dir=data
    )
    assert [p.ground_truth for p in aime] == ["70"]
    m5 = load_benchmark(BenchmarkSpec.from_dict({"name": "math500"}), cache_dir=tmp_path / "c", data_dir=data)
    assert m5[0].ground_truth == "1" and m5[0].data_source == "math500"


def test_plain_table_and_rl_parquet(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("question,answer\nWhat is 3*3?,9\nWhat is 1+1?,2\n")
    spec = BenchmarkSpec.from_dict({"name": "mine", "preset": "table", "path": str(csv)})
    probs = load_benchmark(spec, cache_dir=tmp_path / "c")
    assert [p.ground_truth for p in probs] == ["9", "2"] and probs[0].data_source == "math"
    # the converted file is verl RL parquet, readable by the RL loader
    again = load_rl_parquet(tmp_path / "c" / "mine.parquet")
    assert again == probs

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"problem": ["x"], "answer": ["1"]}), bad)
    with pytest.raises(EvalDataError, match="missing column"):
        load_rl_parquet(bad)
    with pytest.raises(EvalDataError, match="unknown preset"):
        load_benchmark(BenchmarkSpec(name="z", preset="nope"), cache_dir=tmp_path / "c")


def test_arithmetic_preset_matches_the_training_validation_split(tmp_path):
    from verl_agrae.data.arithmetic import write_arithmetic_dataset

    spec = BenchmarkSpec.from_dict({"name": "arithmetic", "n_train": 20, "n_val": 10, "seed": 3})
    probs = load_benchmark(spec, cache_dir=tmp_path / "c")
    train_side = write_arithmetic_dataset(tmp_path / "train_data", n_train=20, n_val=10, seed=3)
    assert probs == load_rl_parquet(train_side["val"])
    assert all(p.data_source == "arithmetic" for p in probs) and len(probs) == 10


def test_resolve_model_accepts_hf_dirs_and_explains_fsdp_checkpoints(tmp_path, tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
    step = tmp_path / "global_step_5"
    (step / "actor").mkdir(parents=True)
    (step / "actor" / "model_world_size_2_rank_0.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="verl.model_merger merge"):
        resolve_model(str(step))
    # What verl writes by default: actor/huggingface with config and tokenizer but no weights.
    (step / "actor" / "huggingface").mkdir()
    (step / "actor" / "huggingface" / "config.json").write_text("{}")
    (step / "actor" / "huggingface" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="verl.model_merger merge"):
        resolve_model(str(step))
    (step / "actor" / "huggingface" / "model.safetensors").write_bytes(b"")
    assert resolve_model(str(step)) == step / "actor" / "huggingface"
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "nope"))


def test_shards_are_atomic_and_resumable(tmp_path):
    assert shard_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    d = tmp_path / "s"
    atomic_write_text(d / shard_name(0, 2), "x\n")
    assert pending_ranges(d, shard_ranges(5, 2)) == [(2, 4), (4, 5)]

    with pytest.raises(TypeError):
        atomic_write_text(d / shard_name(2, 4), 123)  # fails mid-write
    assert not (d / shard_name(2, 4)).exists()
    assert not list(d.glob("*.tmp"))  # the temporary file was removed
    (d / ".shard_000004_000005.jsonl.x.tmp").write_text("partial")
    assert clean_partial(d) == 1
    ensure_meta(d, {"a": 1})
    ensure_meta(d, {"a": 1})
    with pytest.raises(ValueError, match=r"changed: \['a'\]"):
        ensure_meta(d, {"a": 2})


def test_derive_seed_is_deterministic_and_distinct():
    assert derive_seed(0, 5) == derive_seed(0, 5)
    assert len({derive_seed(0, i) for i in range(1000)}) == 1000
    assert 0 <= derive_seed(1, 2, 3) < 2**31


def test_the_cpu_demo_task_is_one_definition_for_training_and_evaluation(tmp_path):
    """The sweep preset `arithmetic` with `task: cpu_demo` gives exactly the problems, prompts and reward routing the
    demo's training run validates on (written by the trainer's own data step from the packaged cpu_demo config)."""
    import re

    from omegaconf import OmegaConf, open_dict

    from verl_agrae.eval.datasets import BenchmarkSpec, load_benchmark, load_rl_parquet
    from verl_agrae.trainer.main import _resolve_data, compose_config

    config = compose_config("cpu_demo", [])
    with open_dict(config):
        run_cfg = config.pop("run")
    assert OmegaConf.select(config, "data.val_files") is None  # the demo generates its data
    _resolve_data(config, run_cfg, tmp_path / "demo")
    trained_on = load_rl_parquet(config.data.val_files)

    spec = BenchmarkSpec.from_dict({"name": "arithmetic", "preset": "arithmetic", "task": "cpu_demo", "split": "val"})
    evaluated = load_benchmark(spec, cache_dir=tmp_path / "cache")
    assert len(evaluated) == len(trained_on) == 64
    assert [(p.prompt, p.ground_truth, p.data_source) for p in evaluated] == [
        (p.prompt, p.ground_truth, p.data_source) for p in trained_on
    ]
    # What the demo definition says, checked on the problems themselves.
    for p in evaluated:
        text = p.prompt[-1]["content"]
        assert p.data_source == "arithmetic" and text.endswith("Answer with the final number only.")
        assert all(int(n) <= 20 for n in re.findall(r"\d+", text.split("?")[0]))
    # The packaged sweep reads the same task.
    from verl_agrae.eval.sweep import load_sweep

    sweep = Path(__file__).resolve().parents[1] / "examples" / "sweeps" / "cpu_arithmetic.yaml"
    (bench,) = load_sweep(sweep).benchmarks
    assert bench.options == {"task": "cpu_demo", "split": "val"}
