"""Per-row sampling of the ``hf`` rollout against reference computations (no model needed)."""

from __future__ import annotations

import pytest
import torch

from verl_agrae.rollout.sampling import SamplingOptions, _truncate, choose_next_tokens


def test_options_read_verl_and_vllm_conventions():
    verl_style = {"temperature": 0.7, "top_p": 0.9, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    o = SamplingOptions.from_request(verl_style, default_max_tokens=32)
    assert (o.max_tokens, o.temperature, o.top_p, o.top_k, o.logprobs, o.seed, o.n) == (32, 0.7, 0.9, -1, True, None, 1)
    o = SamplingOptions.from_request({"max_new_tokens": 5, "logprobs": 0, "seed": 3, "stop_token_ids": [4]}, 32)
    assert (o.max_tokens, o.logprobs, o.seed, o.stop_token_ids) == (5, True, 3, (4,))  # vLLM: logprobs=0 asks
    o = SamplingOptions.from_request({"max_tokens": 7, "logprobs": False, "top_k": None}, 32)
    assert (o.max_tokens, o.logprobs, o.top_k) == (7, False, -1)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"beam_width": 2}, "beam_width"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n must"),
    ],
)
def test_options_reject_bad_input_by_name(params, match):
    with pytest.raises(ValueError, match=match):
        SamplingOptions.from_request(params, default_max_tokens=8)


def _reference_keep(logits: torch.Tensor, k: int, p: float) -> set[int]:
    """Tokens a top-k then top-p sampler may pick, computed one token at a time."""
    order = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    if k > 0:
        order = order[:k]
    probs = torch.softmax(logits[order], dim=-1).tolist()
    keep, mass = [], 0.0
    for tok, pr in zip(order, probs, strict=True):
        if keep and mass > p:
            break
        keep.append(tok)
        mass += pr
    return set(keep)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_truncation_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 40, generator=gen) * 2
    top_k = torch.tensor([-1, 1, 5, 40, 3, -1])
    top_p = torch.tensor([1.0, 1.0, 0.5, 0.9, 0.3, 0.05])
    out = _truncate(logits, top_k, top_p)
    for row in range(6):
        kept = set(torch.nonzero(torch.isfinite(out[row])).flatten().tolist())
        assert kept == _reference_keep(logits[row], int(top_k[row]), float(top_p[row])), row
        finite = torch.isfinite(out[row])
        torch.testing.assert_close(out[row][finite], logits[row][finite])


def test_log_probs_follow_the_actor_convention_and_greedy_is_argmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 30, generator=gen)
    opts = [
        SamplingOptions(max_tokens=1, temperature=0),
        SamplingOptions(max_tokens=1, temperature=0.5, top_k=3),
        SamplingOptions(max_tokens=1, temperature=1.0, top_p=0.5),
        SamplingOptions(max_tokens=1, temperature=2.0, repetition_penalty=1.3),
    ]
    seen = torch.zeros(4, 30, dtype=torch.bool)
    seen[3, :5] = True
    tokens, lps = choose_next_tokens(logits, opts, [None] * 4, torch.Generator().manual_seed(0), seen)
    assert tokens[0] == logits[0].argmax()
    for row, temp in enumerate([1.0, 0.5, 1.0, 2.0]):  # greedy rows report T = 1
        expected = torch.log_softmax(logits[row] / temp, dim=-1)[tokens[row]]
        torch.testing.assert_close(lps[row], expected)
    assert int(tokens[1]) in set(logits[1].topk(3).indices.tolist())


def test_sampling_distribution_and_seeded_rows():
    # Empirical frequencies follow softmax(logits / T) over many seeded draws.
    rows = 4000
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(rows, 4)
    opts = [SamplingOptions(max_tokens=1, temperature=0.8)] * rows
    tokens, _ = choose_next_tokens(logits, opts, [None] * rows, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=4).float()
    expected = torch.softmax(logits[0] / 0.8, dim=-1)
    assert torch.allclose(counts / counts.sum(), expected, atol=0.03), (counts / counts.sum(), expected)

    # A seeded row draws the same token whatever the other rows are.
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(5))
    seeded = SamplingOptions(max_tokens=1, temperature=1.0, seed=11)
    other = SamplingOptions(max_tokens=1, temperature=1.0)
    picks = []
    for others in range(3):
        g = torch.Generator().manual_seed(11)
        rows = [other] * others + [seeded]
        gens = [None] * others + [g]
        tok, _ = choose_next_tokens(logits[[*range(others), 2]], rows, gens, torch.Generator().manual_seed(others))
        picks.append(int(tok[-1]))
    assert len(set(picks)) == 1
