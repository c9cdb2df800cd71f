"""Dr.GRPO's loss normaliser is a constant in our configs: verl's own policy loss gives every token the same
weight whatever the padded width of the micro-batch it lands in.

verl's ``seq-mean-token-sum-norm`` divides each micro-batch's loss by ``loss_scale_factor``, or, when it is unset,
by ``loss_mask.shape[-1]``: the micro-batch's padded width, which under dynamic batching is its own longest
response. The gradient of the loss with respect to one token's log-prob (ratio 1, no clipping) is
``-A / (global_batch_size * normaliser)``, so the per-token weight is the same in every micro-batch exactly when
the normaliser is a constant.
"""

from __future__ import annotations

import pytest
import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.utils.config import omega_conf_to_dataclass

from verl_agrae.trainer.main import compose_config

MAX_RESPONSE = 64
GLOBAL_BATCH = 6  # sequences in the mini-batch the two micro-batches belong to


def _actor_config(name: str, *extra: str):
    # Dynamic batching, as in our example scripts: micro-batches are packed by tokens and padded to their own
    # longest response.
    sizes = [f"data.max_response_length={MAX_RESPONSE}", "trainer.n_gpus_per_node=1"]
    cfg = compose_config(name, [*sizes, "actor_rollout_ref.actor.use_dynamic_bsz=True", *extra])
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    # What verl's V1 loss (verl/workers/utils/losses.py, ppo_loss) puts here before calling the policy loss.
    actor.global_batch_info.update(
        dp_size=1, batch_num_tokens=None, global_batch_size=GLOBAL_BATCH, loss_scale_factor=actor.loss_scale_factor
    )
    return actor


def _token_weights(actor, lengths: list[int]) -> torch.Tensor:
    """d(loss)/d(log_prob) of every valid token in one micro-batch padded to its longest response, A = 1."""
    width = max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    old = torch.zeros(len(lengths), width)
    log_prob = torch.zeros(len(lengths), width, requires_grad=True)  # ratio 1: no clipping anywhere
    adv = torch.ones(len(lengths), width)
    loss, _ = compute_policy_loss_vanilla(old, log_prob, adv, mask, loss_agg_mode=actor.loss_agg_mode, config=actor)
    loss.backward()
    return log_prob.grad[mask]


@pytest.mark.parametrize("name", ["drgrpo", "drgrpo_agrae"])
def test_every_token_weighs_the_same_in_micro_batches_of_different_widths(name):
    actor = _actor_config(name)
    assert actor.loss_agg_mode == "seq-mean-token-sum-norm" and actor.loss_scale_factor == MAX_RESPONSE
    short = _token_weights(actor, [3, 5, 2])  # padded to 5
    long = _token_weights(actor, [7, 40, 1])  # padded to 40
    expected = -1.0 / (GLOBAL_BATCH * MAX_RESPONSE)
    torch.testing.assert_close(short, torch.full_like(short, expected))
    torch.testing.assert_close(long, torch.full_like(long, expected))


def test_without_the_constant_verl_weighs_by_the_micro_batch_width():
    """The defect the constant removes, shown on the same loss: unset, the normaliser is the padded width."""
    actor = _actor_config("drgrpo", "actor_rollout_ref.actor.loss_scale_factor=null")
    assert actor.loss_scale_factor is None
    short = _token_weights(actor, [3, 5, 2])
    long = _token_weights(actor, [7, 40, 1])
    torch.testing.assert_close(short, torch.full_like(short, -1.0 / (GLOBAL_BATCH * 5)))
    torch.testing.assert_close(long, torch.full_like(long, -1.0 / (GLOBAL_BATCH * 40)))
