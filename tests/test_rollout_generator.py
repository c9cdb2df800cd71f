"""Batched decoding of the ``hf`` rollout against one-at-a-time decoding and direct forward passes."""

from __future__ import annotations

import random

import pytest
import torch

from verl_agrae.rollout.generator import GenerationRequest, HFGenerator
from verl_agrae.rollout.sampling import SamplingOptions

EOS = 2  # the tiny tokenizer's <|im_end|>
PAD = 0


@pytest.fixture(scope="module")
def model(lively_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        lively_model_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    return [[rng.randrange(3, 384) for _ in range(rng.randint(1, 24))] for _ in range(8)]


def _greedy(max_tokens=16, **kw):
    return SamplingOptions(max_tokens=max_tokens, temperature=0, logprobs=True, **kw)


def _direct_log_probs(model, prompt, response, temperature=1.0):
    """Log-probs of ``response`` from one full forward pass without cache or padding (the actor's view)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_batched_greedy_equals_one_at_a_time(model, prompts):
    gen = HFGenerator(model, [EOS], PAD)
    batched = gen.generate([GenerationRequest(p, _greedy()) for p in prompts])
    assert gen.num_batches == 1
    singles = [gen.generate([GenerationRequest(p, _greedy())])[0] for p in prompts]
    distinct = set()
    for b, s in zip(batched, singles, strict=True):
        assert b[0].token_ids == s[0].token_ids
        torch.testing.assert_close(torch.tensor(b[0].log_probs), torch.tensor(s[0].log_probs), atol=1e-4, rtol=0)
        distinct.add(tuple(b[0].token_ids))
    assert len(distinct) == len(prompts)  # the model produces varied text, so the comparison means something


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_log_probs_equal_direct_forward(model, prompts, temperature):
    gen = HFGenerator(model, [EOS], PAD, seed=1)
    opts = SamplingOptions(max_tokens=16, temperature=temperature, logprobs=True, top_k=50, top_p=0.9)
    results = gen.generate([GenerationRequest(p, opts) for p in prompts[:6]])
    for p, (res,) in zip(prompts, results, strict=False):
        ref = _direct_log_probs(model, p, res.token_ids, temperature if temperature > 0 else 1.0)
        assert (ref - torch.tensor(res.log_probs)).abs().max().item() < 1e-4


def test_max_tokens_and_eos_stop_per_request(model, prompts):
    gen = HFGenerator(model, [EOS], PAD)
    free = gen.generate([GenerationRequest(prompts[0], _greedy(20))])[0][0].token_ids
    # Use a token the model really emits mid-response as "EOS": generation must stop right after it.
    stop_at = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    stop_tok = free[stop_at]
    eos_gen = HFGenerator(model, [stop_tok], PAD)
    reqs = [
        GenerationRequest(prompts[0], _greedy(20)),
        GenerationRequest(prompts[0], _greedy(20, ignore_eos=True)),
        GenerationRequest(prompts[1], _greedy(3)),
        GenerationRequest(prompts[2], _greedy(7)),
    ]
    stopped, ignored, short, mid = (r[0] for r in eos_gen.generate(reqs))
    assert stopped.token_ids == free[: stop_at + 1] and stopped.finish_reason == "stop"
    assert ignored.token_ids == free and ignored.finish_reason == "length"
    assert len(short.token_ids) == 3 and len(mid.token_ids) <= 7
    # stop_token_ids stop a request without changing the model's EOS.
    (via_stop,) = gen.generate([GenerationRequest(prompts[0], _greedy(20, stop_token_ids=(stop_tok,)))])[0:1]
    assert via_stop[0].token_ids == free[: stop_at + 1]


def test_seed_reproducible_and_n_samples(model, prompts):
    gen = HFGenerator(model, [EOS], PAD)
    seeded = SamplingOptions(max_tokens=12, temperature=1.0, seed=123, n=4)
    alone = gen.generate([GenerationRequest(prompts[3], seeded)])[0]
    crowd = gen.generate(
        [
            GenerationRequest(prompts[4], SamplingOptions(max_tokens=9, temperature=1.0)),
            GenerationRequest(prompts[3], seeded),
            GenerationRequest(prompts[5], SamplingOptions(max_tokens=5, temperature=0.5, seed=9)),
        ]
    )[1]
    assert len(alone) == 4
    assert [r.token_ids for r in alone] == [r.token_ids for r in crowd]
    assert len({tuple(r.token_ids) for r in alone}) > 1  # the n samples differ from one another
    other = gen.generate([GenerationRequest(prompts[3], SamplingOptions(max_tokens=12, temperature=1.0, seed=124))])
    assert other[0][0].token_ids != alone[0].token_ids
    assert all(r.log_probs is None for r in alone)  # not requested


def test_abort_keeps_partial_tokens(model, prompts):
    gen = HFGenerator(model, [EOS], PAD)
    polls = {"n": 0}

    def abort_after_five():
        polls["n"] += 1
        return polls["n"] > 5

    results = gen.generate([GenerationRequest(p, _greedy(50, ignore_eos=True)) for p in prompts[:3]], abort_after_five)
    full = gen.generate([GenerationRequest(prompts[0], _greedy(50, ignore_eos=True))])[0][0]
    for (r,) in results:
        assert r.finish_reason == "abort" and len(r.token_ids) == 5 and len(r.log_probs) == 5
    assert results[0][0].token_ids == full.token_ids[:5]


def test_empty_prompt_is_rejected(model):
    with pytest.raises(ValueError, match="empty prompt"):
        HFGenerator(model, [EOS], PAD).generate([GenerationRequest([], _greedy())])


def test_shared_prefix_and_duplicate_prompts_are_prefilled_once_with_same_results(model, prompts):
    # verl's shape: a common chat preamble and every prompt sent n times.
    preamble = [1, 45, 67, 89, 101, 23, 45, 67, 200, 210, 220, 10]
    batch = [preamble + p for p in prompts[:4] for _ in range(3)] + [preamble]  # + the bare preamble
    calls = {"n": 0, "widths": []}
    original_forward = model.forward

    def counting_forward(*args, **kwargs):
        calls["n"] += 1
        calls["widths"].append(tuple(kwargs["input_ids"].shape))
        return original_forward(*args, **kwargs)

    gen = HFGenerator(model, [EOS], PAD)
    model.forward = counting_forward
    try:
        batched = gen.generate([GenerationRequest(p, _greedy(8)) for p in batch])
    finally:
        model.forward = original_forward
    # prefill: the shared prefix once (1 row), then 5 distinct suffixes; then decoding steps of all 13 rows.
    assert calls["widths"][0] == (1, len(preamble) - 1)
    assert calls["widths"][1][0] == 5
    checked, first = set(), {}
    for p, (res,) in zip(batch, batched, strict=True):
        if tuple(p) in checked:  # duplicates of one prompt all decode the same greedy text
            assert res.token_ids == first[tuple(p)]
            continue
        (alone,) = gen.generate([GenerationRequest(p, _greedy(8))])[0]
        assert res.token_ids == alone.token_ids
        ref = _direct_log_probs(model, p, res.token_ids)
        assert (ref - torch.tensor(res.log_probs)).abs().max().item() < 1e-4
        checked.add(tuple(p))
        first[tuple(p)] = res.token_ids
