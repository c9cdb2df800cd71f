"""CPU sweeps with the tiny local model: resumption after failures and kills, CLI, config validation (vLLM settings
included; the vLLM engine itself is tested in test_eval_vllm_cpu.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verl_agrae.eval import cell as cell_mod
from verl_agrae.eval.cli import main as eval_main
from verl_agrae.eval.hf_backend import HFBackend
from verl_agrae.eval.sampling import GenerationConfig
from verl_agrae.eval.sweep import load_sweep, run_sweep
from verl_agrae.eval.vllm_backend import engine_kwargs as vllm_engine_kwargs
from verl_agrae.eval.vllm_backend import plan_num_engines, resolve_kv_cache_bytes, resolve_vllm_dtype

N_PROBLEMS, N_SAMPLES, SHARD = 6, 4, 2  # 3 shards per cell


def write_sweep(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    cfg = tmp_path / f"sweep_{out.name}.yaml"
    cfg.write_text(
        f"""
output_dir: {out}
runs:
  - {{name: tiny, model: {model_dir}}}
benchmarks:
  - {{name: arith, preset: arithmetic, limit: {N_PROBLEMS}, n_train: 8, n_val: 16}}
sampling:
  - {{name: s, n: {N_SAMPLES}, max_tokens: 8, seed: 1}}
generation: {{backend: hf, shard_size: {SHARD}, batch_size: 8, dtype: float32}}
grading: {{timeout: 5, num_workers: 1}}
report: {{num_boot: 200, maj_draws: 32}}
"""
    )
    return cfg


def last_integer_grader(solutions, ground_truths, data_sources):
    """An independent stand-in for the reward module: the last integer of the response must match."""
    out = []
    for text, gt in zip(solutions, ground_truths, strict=True):
        nums = re.findall(r"-?\d+", text)
        pred = nums[-1] if nums else None
        out.append({"score": float(pred == gt), "acc": pred == gt, "pred": pred, "timeout": False})
    return out


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), PNGs excluded (renderer metadata)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def comparable(out: Path) -> dict[str, bytes]:
    files = tree(out / "cells")
    for name in ("passk.csv", "comparisons.csv", "summary.json", "summary.md"):
        files[f"report/{name}"] = (out / "report" / name).read_bytes()
    return files


def test_sweep_resumes_after_failures_with_identical_outputs(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cell_mod, "_default_grader", lambda *a, **k: last_integer_grader)
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    run_sweep(load_sweep(write_sweep(tmp_path, tiny_model_dir, ref_out)), progress=False)
    cfg = load_sweep(write_sweep(tmp_path, tiny_model_dir, out))

    # 1) generation dies after the first shard
    real_generate = HFBackend.generate
    calls = {"n": 0}

    def failing_generate(self, problems, start, sampling):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected crash in shard 2")
        return real_generate(self, problems, start, sampling)

    monkeypatch.setattr(HFBackend, "generate", failing_generate)
    with pytest.raises(RuntimeError, match="injected"):
        run_sweep(cfg, progress=False)
    samples = out / "cells" / "tiny__arith__s" / "samples"
    assert sorted(p.name for p in samples.glob("shard_*")) == ["shard_000000_000002.jsonl"]
    # a writer killed mid-shard leaves a temporary file behind; it must not be mistaken for a shard
    (samples / ".shard_000002_000004.jsonl.abc.tmp").write_text('{"index": 2, "sample": 0}\n')
    monkeypatch.setattr(HFBackend, "generate", real_generate)

    # 2) grading dies after the first shard
    graded_calls = {"n": 0}

    def failing_grader(solutions, ground_truths, data_sources):
        graded_calls["n"] += 1
        if graded_calls["n"] == 2:
            raise RuntimeError("injected grading crash")
        return last_integer_grader(solutions, ground_truths, data_sources)

    monkeypatch.setattr(cell_mod, "_default_grader", lambda *a, **k: failing_grader)
    with pytest.raises(RuntimeError, match="injected grading"):
        run_sweep(cfg, progress=False)
    assert len(list(samples.glob("shard_*"))) == 3 and not list(samples.glob("*.tmp"))
    assert len(list((samples.parent / "graded").glob("shard_*"))) == 1

    # 3) the rerun finishes; every file equals the uninterrupted run's
    monkeypatch.setattr(cell_mod, "_default_grader", lambda *a, **k: last_integer_grader)
    run_sweep(cfg, progress=False)
    assert comparable(out) == comparable(ref_out)
    res = cell_mod.load_cell_results(samples.parent)
    assert res.n.tolist() == [N_SAMPLES] * N_PROBLEMS  # nothing lost or duplicated
    assert all(len(set(a)) >= 1 for a in res.answers)
    png = out / "report" / "passk_arith__s.png"
    assert png.is_file() and png.stat().st_size > 10_000


def test_rerun_with_changed_settings_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cell_mod, "_default_grader", lambda *a, **k: last_integer_grader)
    out = tmp_path / "o"
    cfg_path = write_sweep(tmp_path, tiny_model_dir, out)
    run_sweep(load_sweep(cfg_path), progress=False, report=False)
    cfg_path.write_text(cfg_path.read_text().replace("seed: 1", "seed: 2"))
    with pytest.raises(ValueError, match="different settings"):
        run_sweep(load_sweep(cfg_path), progress=False, report=False)


@pytest.mark.slow
def test_killed_subprocess_sweep_resumes_to_identical_files(tiny_model_dir, tmp_path):
    """SIGKILL a real `verl-agrae eval sweep` process mid-run, rerun it, compare with an uninterrupted run."""
    pytest.importorskip("verl_agrae.reward", reason="grading needs the reward module")
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    assert eval_main(["sweep", str(write_sweep(tmp_path, tiny_model_dir, ref_out)), "--no-progress"]) == 0
    cfg = write_sweep(tmp_path, tiny_model_dir, out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "verl_agrae.eval", "sweep", str(cfg), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples = out / "cells" / "tiny__arith__s" / "samples"
    deadline = time.time() + 600  # generous: a loaded CI machine starts torch slowly
    try:
        while time.time() < deadline and proc.poll() is None and not list(samples.glob("shard_*")):
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert list(samples.glob("shard_*")), "the sweep wrote nothing before it was killed"
    assert eval_main(["sweep", str(cfg), "--no-progress"]) == 0
    assert comparable(out) == comparable(ref_out)


def test_cli_lists_and_counts_cells(tmp_path, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        """
output_dir: out
runs: [{name: a, model: /m/a}, {name: b, model: /m/b}]
benchmarks: [{name: math500}, {name: arith, preset: arithmetic}]
sampling: [{name: t06}, {name: t10, temperature: 1.0}]
"""
    )
    assert eval_main(["sweep", str(cfg), "--num-cells"]) == 0
    assert capsys.readouterr().out.strip() == "8"
    assert eval_main(["sweep", str(cfg), "--list-cells"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t")[:2] == ["0", "a__math500__t06"]
    assert lines[7].split("\t")[:2] == ["7", "b__arith__t10"]
    parsed = load_sweep(cfg)
    assert parsed.sampling[0].n == 256 and parsed.sampling[0].top_p == 0.95  # paper defaults
    assert parsed.benchmarks[0].preset == "math500"
    assert eval_main(["sweep", str(cfg), "--cell", "8"]) == 2
    assert "out of range" in capsys.readouterr().err
    # where a cell writes (slurm/eval_sweep.sbatch counts its shards there to tell whether an attempt progressed)
    assert eval_main(["sweep", str(cfg), "--cell-dir", "7"]) == 0
    assert capsys.readouterr().out.strip() == str(Path("out") / "cells" / "b__arith__t10")
    assert eval_main(["sweep", str(cfg), "--cell-dir", "8", "--output-dir", "elsewhere"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert eval_main(["sweep", str(cfg), "--cell-dir", "0", "--output-dir", "elsewhere"]) == 0
    assert capsys.readouterr().out.strip() == str(Path("elsewhere") / "cells" / "a__math500__t06")


_BASE = "output_dir: o\nruns: [{name: a, model: m}]\nbenchmarks: [{name: x}]\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("output_dir: o\nruns: [{name: a, model: m}]\nbenchmarks: [{name: x}]\nbogus: 1\n", "unknown top-level"),
        ("output_dir: o\nruns: []\nbenchmarks: [{name: x}]\n", "'runs' must list"),
        ("output_dir: o\nruns: [{name: a, model: m}, {name: a, model: n}]\nbenchmarks: [{name: x}]\n", "duplicate"),
        ("output_dir: o\nruns: [{name: a__b, model: m}]\nbenchmarks: [{name: x}]\n", "must match"),
        (
            "output_dir: o\nruns: [{name: a, model: m}]\nbenchmarks: [{name: x}]\nsampling: {tempreature: 1}\n",
            "unknown",
        ),
        ("output_dir: o\nruns: [{name: a, model: m}]\nbenchmarks: [{name: x}]\nsampling: {top_p: 0}\n", "top_p"),
        (_BASE + "generation: {kv_cache_gib: 0}\n", "generation.kv_cache_gib"),
        (_BASE + "generation: {kv_cache_gib: -2}\n", "generation.kv_cache_gib"),
        (_BASE + "generation: {kv_cache_gib: 4GB}\n", "generation.kv_cache_gib"),
        (_BASE + "generation: {kv_cache_gib: .nan}\n", "generation.kv_cache_gib"),
        (_BASE + "generation: {kv_cache_gib: true}\n", "generation.kv_cache_gib"),
        (_BASE + "generation: {gpu_memory_utilization: 1.5}\n", "generation.gpu_memory_utilization"),
        (_BASE + "generation: {enforce_eager: 'no'}\n", "generation.enforce_eager"),
        (_BASE + "grading: {extraction: fuzzy}\n", "grading.extraction: extraction mode must be one of"),
    ],
)
def test_sweep_config_errors_name_the_problem(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_sweep(cfg)


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    from verl_agrae.eval.cli import main

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("output_dir: o\nruns: [{name: a, model: m}\nbenchmarks: [{name: x}]\n")  # unclosed list
    with pytest.raises(ValueError, match=f"{cfg}: not valid YAML: line 3, column 1: expected ','"):
        load_sweep(cfg)
    assert main(["sweep", str(cfg), "--num-cells"]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: not valid YAML: line 3" in err and "Traceback" not in err


def test_grade_cell_scores_with_the_reward_module(tmp_path):
    """Hand-written responses through the real ``score_batch``: acc, extracted answers and maj@k plumbing."""
    pytest.importorskip("verl_agrae.reward", reason="grading needs the reward module")
    from verl_agrae.eval.shards import ensure_meta, shard_name, write_jsonl_atomic

    cell = tmp_path / "cell"
    problems = [
        {"index": 0, "uid": "a", "ground_truth": "12", "data_source": "arithmetic"},
        {"index": 1, "uid": "b", "ground_truth": "\\frac{1}{2}", "data_source": "math500"},
    ]
    texts = [
        ["so \\boxed{12}", "\\boxed{13}", "no idea"],
        ["\\boxed{0.5}", "\\boxed{\\frac{2}{4}}", "\\boxed{2}"],
    ]
    write_jsonl_atomic(cell / "problems.jsonl", problems)
    ensure_meta(cell / "samples", {"model": "m", "shard_size": 1, "num_problems": 2})
    for i in range(2):
        recs = [
            {"index": i, "uid": problems[i]["uid"], "sample": j, "text": t, "n_tokens": 5, "finish_reason": "stop"}
            for j, t in enumerate(texts[i])
        ]
        write_jsonl_atomic(cell / "samples" / shard_name(i, i + 1), recs)
    # A generous limit: these answers are graded in milliseconds, and `timeouts == 0` must not depend on load.
    assert cell_mod.grade_cell(cell, timeout=60, num_workers=1, progress=False) == 2
    assert cell_mod.grade_cell(cell, timeout=60, num_workers=1, progress=False) == 0  # resumed: nothing to do
    res = cell_mod.load_cell_results(cell)
    assert res.correct == [[True, False, False], [True, True, False]]
    assert res.c.tolist() == [1, 2] and res.timeouts == 0
    assert res.answers[0][0] == "12" and res.answers[0][2] is None
    # Samples regenerated with other settings: the old grades are refused, not reused.
    (cell / "samples" / "meta.json").unlink()
    ensure_meta(cell / "samples", {"model": "other", "shard_size": 1, "num_problems": 2})
    with pytest.raises(ValueError, match="samples"):
        cell_mod.grade_cell(cell, timeout=5, num_workers=1, progress=False)


def test_generation_config_accepts_vllm_cpu_options(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(_BASE + "generation: {backend: vllm, kv_cache_gib: 1.5, enforce_eager: true}\n")
    gen = load_sweep(cfg).generation
    assert gen.kv_cache_gib == 1.5 and gen.enforce_eager is True
    assert GenerationConfig().kv_cache_gib is None and GenerationConfig().enforce_eager is False


def test_vllm_dtype_resolution():
    assert resolve_vllm_dtype("auto", on_cpu=True) == "float32"  # vLLM's own auto would be bf16 on CPU
    assert resolve_vllm_dtype("auto", on_cpu=False) == "auto"
    assert resolve_vllm_dtype("bf16", on_cpu=True) == "bfloat16"
    assert resolve_vllm_dtype("float16", on_cpu=False) == "float16"
    with pytest.raises(ValueError, match="generation.dtype"):
        resolve_vllm_dtype("int8", on_cpu=True)


def test_vllm_kv_cache_resolution():
    gib = 1 << 30
    opt = GenerationConfig(kv_cache_gib=0.5)
    # The option, on either device.
    assert resolve_kv_cache_bytes(opt, on_cpu=True, environ={}) == gib // 2
    assert resolve_kv_cache_bytes(opt, on_cpu=False, environ={}) == gib // 2
    # Unset: vLLM's GPU fraction on GPU; on CPU a quarter of the available memory within [1, 32] GiB.
    assert resolve_kv_cache_bytes(GenerationConfig(), on_cpu=False, environ={}) is None
    assert resolve_kv_cache_bytes(GenerationConfig(), on_cpu=True, available_bytes=20 * gib, environ={}) == 5 * gib
    assert resolve_kv_cache_bytes(GenerationConfig(), on_cpu=True, available_bytes=2 * gib, environ={}) == gib
    assert resolve_kv_cache_bytes(GenerationConfig(), on_cpu=True, available_bytes=512 * gib, environ={}) == 32 * gib
    # vLLM applies VLLM_CPU_KVCACHE_SPACE last, so the resolved size is the variable's (GPU: not read by vLLM).
    env = {"VLLM_CPU_KVCACHE_SPACE": "3"}
    assert resolve_kv_cache_bytes(opt, on_cpu=True, environ=env) == 3 * gib
    assert resolve_kv_cache_bytes(opt, on_cpu=False, environ=env) == gib // 2
    with pytest.raises(ValueError, match="VLLM_CPU_KVCACHE_SPACE"):
        resolve_kv_cache_bytes(opt, on_cpu=True, environ={"VLLM_CPU_KVCACHE_SPACE": "1.5"})


def test_vllm_engine_kwargs_on_cpu_and_gpu():
    gen = GenerationConfig(tensor_parallel_size=2, kv_cache_gib=2, enforce_eager=True, max_model_len=2048)
    cpu = vllm_engine_kwargs("m", gen, 7, on_cpu=True, environ={})
    assert cpu == {
        "model": "m",
        "tensor_parallel_size": 2,
        "dtype": "float32",
        "seed": 7,
        "enable_prefix_caching": True,
        "enforce_eager": True,
        "generation_config": "vllm",
        "kv_cache_memory_bytes": 2 << 30,
        "max_model_len": 2048,
    }  # no GPU fraction (vLLM would reserve it of all RAM) and no executor override on CPU
    gpu = vllm_engine_kwargs("m", GenerationConfig(), 7, on_cpu=False, environ={})
    assert gpu["gpu_memory_utilization"] == 0.85 and gpu["dtype"] == "auto"
    assert "kv_cache_memory_bytes" not in gpu and "distributed_executor_backend" not in gpu
    assert vllm_engine_kwargs("m", gen, 7, on_cpu=False, environ={})["distributed_executor_backend"] == "mp"


def test_vllm_engine_plan():
    assert plan_num_engines(GenerationConfig(num_engines=4), on_cpu=True, local_gpus=0, ray_address=None) == 1
    assert plan_num_engines(GenerationConfig(), on_cpu=True, local_gpus=8, ray_address="auto") == 1
    assert plan_num_engines(GenerationConfig(), on_cpu=False, local_gpus=8, ray_address=None) == 8
    assert plan_num_engines(GenerationConfig(tensor_parallel_size=4), on_cpu=False, local_gpus=8, ray_address=None) == 2
    assert plan_num_engines(GenerationConfig(), on_cpu=False, local_gpus=8, ray_address="10.0.0.1:6379") == -1
    assert plan_num_engines(GenerationConfig(num_engines=3), on_cpu=False, local_gpus=8, ray_address=None) == 3


def test_auto_backend_is_hf_without_vllm(monkeypatch):
    import importlib.util

    from verl_agrae.eval import vllm_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert vllm_backend.vllm_available() is False
