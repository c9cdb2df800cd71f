"""Response-position logits in verl's padded forward (patch 10) against verl's own code on the same batch.

The reference is verl 0.9.1's ``FSDPEngineWithLMHead.prepare_model_inputs/outputs`` unpatched (kept as
``_verl_agrae_original``), run the way ``forward_step`` runs them, on batches built by verl's own
``left_right_2_no_padding`` from left-padded prompts and right-padded responses of random lengths. What verl's
consumers read (``no_padding_2_padding``: the response positions) must agree, values and gradients.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")

from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.dataset.dataset_utils import DatasetPadMode  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

from verl_agrae.integration import patches  # noqa: E402
from verl_agrae.integration import response_logits as rl  # noqa: E402
from verl_agrae.testing.tiny_model import tiny_llama  # noqa: E402

VOCAB = 97


def _micro_batch(
    bsz: int, prompt_range: tuple[int, int], max_response: int, seed: int, temperature: float = 1.0
) -> object:
    """An RL micro-batch as verl's actor sees it: prompts (lengths in ``prompt_range``, inclusive; row 0 the
    shortest) left-padded, responses right-padded, then nested by verl."""
    from tensordict import TensorDict

    gen = torch.Generator().manual_seed(seed)
    shortest, max_prompt = prompt_range
    prompt_lens = torch.randint(shortest, max_prompt + 1, (bsz,), generator=gen)
    prompt_lens[0] = shortest  # the shortest prompt is in the batch
    response_lens = torch.randint(1, max_response + 1, (bsz,), generator=gen)
    prompts = torch.zeros(bsz, max_prompt, dtype=torch.long)
    responses = torch.zeros(bsz, max_response, dtype=torch.long)
    attention_mask = torch.zeros(bsz, max_prompt + max_response, dtype=torch.long)
    for i in range(bsz):
        p, r = int(prompt_lens[i]), int(response_lens[i])
        prompts[i, max_prompt - p :] = torch.randint(1, VOCAB, (p,), generator=gen)
        responses[i, :r] = torch.randint(1, VOCAB, (r,), generator=gen)
        attention_mask[i, max_prompt - p : max_prompt + r] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    data = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "response_mask": attention_mask[:, max_prompt:],
            "position_ids": position_ids,
        },
        batch_size=[bsz],
    )
    data = left_right_2_no_padding(data)
    tu.assign_non_tensor_data(data, "use_remove_padding", False)
    tu.assign_non_tensor_data(data, "pad_mode", DatasetPadMode.NO_PADDING)
    tu.assign_non_tensor_data(data, "temperature", temperature)
    tu.assign_non_tensor_data(data, "calculate_entropy", True)
    tu.assign_non_tensor_stack(data, "multi_modal_inputs", [{} for _ in range(bsz)])  # as verl's trainer sends it
    return data


def _engine(model: torch.nn.Module) -> object:
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    engine = object.__new__(FSDPEngineWithLMHead)  # the methods under test need only these attributes
    engine.module = model
    engine.pad_to_length = None
    engine.use_ulysses_sp = False
    engine.engine_config = SimpleNamespace(entropy_checkpointing=False, entropy_from_logits_with_chunking=False)
    return engine


def _forward(engine, micro_batch, prepare_inputs, prepare_outputs, loss_function=None):
    # FSDPEngineWithLMHead.forward_step's three calls.
    model_inputs, output_args = prepare_inputs(engine, micro_batch)
    raw = engine.module(**model_inputs, use_cache=False)
    out = prepare_outputs(engine, raw, output_args, micro_batch, loss_function)
    return out, model_inputs


@pytest.fixture(scope="module")
def patched():
    patches.padded_forward_projects_every_position()
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    cls = FSDPEngineWithLMHead
    return (
        (cls.prepare_model_inputs._verl_agrae_original, cls.prepare_model_outputs._verl_agrae_original),
        (cls.prepare_model_inputs, cls.prepare_model_outputs),
    )


@pytest.mark.parametrize(
    ("bsz", "prompts", "max_response", "seed", "temperature"),
    [
        (1, (5, 5), 3, 0, 1.0),
        (4, (2, 12), 8, 1, 0.7),
        (8, (6, 20), 16, 2, 1.0),
        (6, (3, 9), 30, 3, 0.6),
        (5, (1, 9), 7, 4, 1.0),  # a one-token prompt: nothing to skip, verl's own path
    ],
)
def test_response_positions_match_verls_full_forward(patched, bsz, prompts, max_response, seed, temperature):
    (orig_in, orig_out), (new_in, new_out) = patched
    model = tiny_llama(VOCAB, hidden_size=32, seed=seed, std=0.3)
    engine = _engine(model)
    mb = _micro_batch(bsz, prompts, max_response, seed, temperature)
    weights = torch.randn(bsz, max_response, generator=torch.Generator().manual_seed(seed + 100))

    results = []
    for prepare_in, prepare_out in ((orig_in, orig_out), (new_in, new_out)):
        model.zero_grad(set_to_none=True)
        out, model_inputs = _forward(engine, mb, prepare_in, prepare_out)
        log_probs = no_padding_2_padding(out["log_probs"], mb)  # (bsz, max_response), what verl's loss reads
        entropy = no_padding_2_padding(out["entropy"], mb)
        mask = mb["response_mask"].bool()
        # A loss through both outputs, so the gradients of both are compared.
        ((log_probs * weights + 0.1 * entropy) * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((log_probs * mask, entropy * mask, grads, model_inputs))

    (lp0, ent0, g0, in0), (lp1, ent1, g1, in1) = results
    assert "logits_to_keep" not in in0
    prompt_lens = mb["input_ids"].offsets().diff() - mb["response_mask"].sum(dim=1)
    max_len = int(mb["input_ids"].offsets().diff().max())
    if prompts[0] > 1:
        assert in1["logits_to_keep"] == max_len - (int(prompt_lens.min()) - 1) < max_len
    else:
        assert int(prompt_lens.min()) == 1 and "logits_to_keep" not in in1
    torch.testing.assert_close(lp1, lp0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent1, ent0, rtol=1e-5, atol=1e-6)
    for name in g0:
        # Summation order differs (the projection runs on fewer rows): float noise relative to the gradient's scale.
        scale = float(g0[name].abs().max())
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


TEXT = {"input_ids": None, "attention_mask": None, "position_ids": None}


def test_batches_verl_must_handle_itself_are_left_alone(patched):
    mb = _micro_batch(4, (3, 10), 6, 0)
    assert rl.response_logits_start(mb, TEXT) is not None
    for key, value in [("use_remove_padding", True), ("use_fused_kernels", True), ("calculate_sum_pi_squared", True)]:
        other = mb.clone()
        tu.assign_non_tensor_data(other, key, value)
        assert rl.response_logits_start(other, TEXT) is None, key
    sft = mb.clone()
    del sft["prompts"]  # an SFT batch: its loss reads every position
    assert rl.response_logits_start(sft, TEXT) is None
    assert rl.response_logits_start(mb, {**TEXT, "pixel_values": None}) is None  # an image batch


def test_the_environment_switch_turns_it_off(patched, monkeypatch):
    mb = _micro_batch(4, (3, 10), 6, 0)
    monkeypatch.setenv(rl.ENV, "0")
    assert rl.response_logits_start(mb, TEXT) is None
    monkeypatch.setenv(rl.ENV, "1")
    assert rl.response_logits_start(mb, TEXT) == 2


def test_the_critic_keeps_every_position(patched):
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithValueHead

    (_, _), (new_in, _) = patched
    critic = _engine(tiny_llama(VOCAB, hidden_size=32, seed=0))
    critic.__class__ = FSDPEngineWithValueHead  # its own prepare_model_outputs reads a value at every position
    model_inputs, output_args = FSDPEngineWithValueHead.prepare_model_inputs(critic, _micro_batch(4, (3, 10), 6, 0))
    assert "logits_to_keep" not in model_inputs and rl.KEEP_FROM not in output_args
    actor = _engine(tiny_llama(VOCAB, hidden_size=32, seed=0))
    assert "logits_to_keep" in new_in(actor, _micro_batch(4, (3, 10), 6, 0))[0]


def test_the_start_is_the_shortest_prompt_minus_one():
    mb = _micro_batch(5, (2, 16), 4, 7)
    prompt_lens = mb["attention_mask"][:, : mb["prompts"].shape[1]].sum(dim=1)
    assert rl.response_logits_start(mb, TEXT) == int(prompt_lens.min()) - 1


def test_entropy_is_gradient_free_only_when_its_coefficient_is_zero(patched):
    from verl.workers.config import ActorConfig
    from verl.workers.utils.losses import ppo_loss

    (_, _), (new_in, new_out) = patched
    engine = _engine(tiny_llama(VOCAB, hidden_size=32, seed=0, std=0.3))
    mb = _micro_batch(4, (3, 10), 6, 0)

    def actor_config(coeff: float) -> ActorConfig:
        return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, entropy_coeff=coeff)

    assert not rl.entropy_needs_grad(functools.partial(ppo_loss, config=actor_config(0.0)))
    assert rl.entropy_needs_grad(functools.partial(ppo_loss, config=actor_config(0.01)))
    assert rl.entropy_needs_grad(None) and rl.entropy_needs_grad(lambda **kw: None)
    for coeff, has_grad in [(0.0, False), (0.01, True)]:
        out, _ = _forward(engine, mb, new_in, new_out, functools.partial(ppo_loss, config=actor_config(coeff)))
        assert out["entropy"].requires_grad is has_grad
        assert out["log_probs"].requires_grad


def test_nested_from_tail_puts_zeros_before_the_start():
    offsets = torch.tensor([0, 3, 7])
    tail = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # positions 1..3 of rows of 3 and 4 tokens
    out = rl.nested_from_tail(tail, 1, offsets)
    assert out.values().tolist() == [0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 6.0]
    assert out.offsets().tolist() == [0, 3, 7]
