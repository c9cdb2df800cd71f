"""The evaluation's HF backend (on the rollout's batched generator): records, greedy parity, seeding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from verl_agrae.eval.datasets import EvalProblem
from verl_agrae.eval.hf_backend import HFBackend
from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig


def _problems(count: int) -> list[EvalProblem]:
    return [
        EvalProblem(str(i), [{"role": "user", "content": f"What is {i} + {2 * i}?"}], str(3 * i), "arithmetic")
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def backend(lively_model_dir):
    torch.set_num_threads(1)
    b = HFBackend(lively_model_dir, GenerationConfig(backend="hf", batch_size=64, dtype="float32", device="cpu"))
    yield b
    b.close()


def test_records_follow_the_contract(backend):
    sampling = SamplingConfig(n=3, temperature=1.0, top_p=0.9, max_tokens=6, seed=5)
    out = backend.generate(_problems(4), 0, sampling)
    assert [len(per) for per in out] == [3, 3, 3, 3]
    for rec in (r for per in out for r in per):
        assert set(rec) == {"text", "n_tokens", "finish_reason"}
        assert 1 <= rec["n_tokens"] <= 6 and isinstance(rec["text"], str)
        assert rec["finish_reason"] in ("stop", "length")
        if rec["finish_reason"] == "length":
            assert rec["n_tokens"] == 6


def test_greedy_matches_transformers_generate(backend):
    problems = _problems(3)
    out = backend.generate(problems, 0, SamplingConfig(n=1, temperature=0.0, max_tokens=8))
    tok, model = backend.tokenizer, backend.model
    for problem, (rec,) in zip(problems, out, strict=True):
        ids = tok(backend._prompt_text(problem), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            seq = model.generate(
                ids, do_sample=False, max_new_tokens=8, eos_token_id=backend.eos_ids, pad_token_id=tok.pad_token_id
            )
        new = seq[0, ids.shape[1] :].tolist()
        assert rec["n_tokens"] == len(new)
        assert rec["text"] == tok.decode(new, skip_special_tokens=True)


def test_samples_depend_on_seed_and_index_but_not_on_batching(backend):
    problems = _problems(5)
    sampling = SamplingConfig(n=4, temperature=1.0, top_p=0.95, max_tokens=8, seed=1)
    whole = backend.generate(problems, 0, sampling)
    assert backend.generate(problems, 0, sampling) == whole  # deterministic for a fixed seed

    backend.gen = dataclasses.replace(backend.gen, batch_size=3)  # other micro-batches
    try:
        tail = backend.generate(problems[2:], 2, sampling)  # another shard boundary
    finally:
        backend.gen = dataclasses.replace(backend.gen, batch_size=64)
    assert tail == whole[2:]

    other_seed = backend.generate(problems, 0, dataclasses.replace(sampling, seed=2))
    assert other_seed != whole
    assert len({r["text"] for per in whole for r in per}) > 1  # samples of a problem differ from each other
