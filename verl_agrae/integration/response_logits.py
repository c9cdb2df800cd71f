"""Logits for response positions only, in verl's padded actor/reference forward.

verl's FSDP engine without remove-padding (``use_remove_padding=False``: the CPU path, since remove-padding needs
flash-attention kernels) asks the model for logits at every position of prompt + response, scales all of them by
the temperature, takes their entropy and log-softmax, and then keeps the response's: every consumer of an RL
batch's ``log_probs`` and ``entropy`` reads positions ``prompt_len - 1 .. prompt_len + response_len - 2`` only
(``no_padding_2_padding`` in ``verl/workers/utils/padding.py``). On the demo's batches the prompt is about two
thirds of each row, and the vocabulary projection, softmax and entropy over a 49,152-word vocabulary are a large
part of a step on a CPU.

Here the model is asked for the logits from the earliest position any row's response needs (Hugging Face's
``logits_to_keep``, which keeps the last K positions of the right-padded batch) and the output keeps verl's
layout: one value per prompt + response token, with zeros at the prompt positions no consumer reads. Values at
the positions consumers read are computed by the same functions from the same logits.

With ``entropy_coeff == 0`` the entropy is a metric, not a loss term: verl still adds ``0 * entropy`` to the loss,
so the backward pass runs through the entropy's softmax over every kept position to add zeros. It is computed
without gradient in that case (the actor's gradient is unchanged: that term's contribution is exactly zero).

Installed by :func:`verl_agrae.integration.patches.padded_forward_projects_every_position` on the CPU platform;
``VERL_AGRAE_RESPONSE_LOGITS=0`` in the workers' environment (e.g.
``+ray_kwargs.ray_init.runtime_env.env_vars.VERL_AGRAE_RESPONSE_LOGITS=0``) runs verl's own code instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from contextlib import nullcontext
from typing import Any

import torch

__all__ = [
    "ENGAGED_MESSAGE",
    "ENV",
    "KEEP_FROM",
    "entropy_needs_grad",
    "model_keeps_logits",
    "nested_from_tail",
    "note_engaged",
    "response_logits_start",
    "response_outputs",
]

logger = logging.getLogger(__name__)
# Runs in verl's worker processes, whose root logger passes only warnings: like verl's worker-side modules, this one
# sets its own level (verl's VERL_LOGGING_LEVEL), so its one INFO line reaches the run's train.log.
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

#: Logged once per process, the first time a batch takes this path (tests look for it in a run's train.log).
ENGAGED_MESSAGE = "logits for response positions only"
_engaged = False

#: ``output_args`` key: first kept position (set by the inputs hook, read by the outputs hook).
KEEP_FROM = "_verl_agrae_logits_from"
#: "0" turns the behaviour off (verl's full-length logits; for comparisons and for suspicion).
ENV = "VERL_AGRAE_RESPONSE_LOGITS"

# Micro-batch flags under which verl's output code does something other than log-probs (+ entropy) per token, or
# the model computes the loss itself: those batches go through verl's own code unchanged.
_OTHER_OUTPUTS = ("use_fused_kernels", "distillation_use_topk", "distillation_only", "calculate_sum_pi_squared")
# What verl's padded branch passes a text-only model (multi-modal batches add their own inputs).
_TEXT_INPUTS = {"input_ids", "attention_mask", "position_ids"}


def _flag(micro_batch: Any, key: str, default: Any = False) -> Any:
    from verl.utils import tensordict_utils as tu

    return tu.get_non_tensor_data(data=micro_batch, key=key, default=default)


def _prompt_lengths(micro_batch: Any) -> torch.Tensor | None:
    """Per-row prompt length, read the way ``no_padding_2_padding`` reads it; None without RL prompts."""
    keys = set(micro_batch.keys())
    if not {"prompts", "responses"} <= keys:
        return None  # e.g. SFT batches: their loss reads every position
    prompts = micro_batch["prompts"]
    if prompts.is_nested:
        return prompts.offsets().diff()
    if "attention_mask" not in keys or micro_batch["attention_mask"].is_nested:
        return None
    return micro_batch["attention_mask"][:, : prompts.shape[1]].sum(dim=1)


def response_logits_start(micro_batch: Any, model_inputs: dict) -> int | None:
    """The first position whose logits a response token of this micro-batch needs, if skipping earlier ones helps.

    Args:
        micro_batch: verl's micro-batch TensorDict; ``input_ids`` nested (bsz, j1), one row per prompt + response.
        model_inputs: what verl's ``prepare_model_inputs`` built for the model from it.

    Returns:
        ``min(prompt_len) - 1`` (the logits at position t score token t + 1), or None when the batch must go
        through verl's code unchanged: remove-padding, fused kernels, distillation, sum of squared probabilities,
        model inputs besides text (images, ...) or 3-D position ids, batches without RL prompts, nothing to skip,
        or ``ENV`` set to "0".
    """
    from verl.utils.dataset.dataset_utils import DatasetPadMode

    if os.environ.get(ENV, "1").strip() == "0":
        return None
    if _flag(micro_batch, "use_remove_padding", True) or any(_flag(micro_batch, k) for k in _OTHER_OUTPUTS):
        return None
    if _flag(micro_batch, "pad_mode", DatasetPadMode.NO_PADDING) != DatasetPadMode.NO_PADDING:
        return None
    if not set(model_inputs) <= _TEXT_INPUTS or micro_batch["position_ids"].dim() != 2:
        return None
    input_ids = micro_batch["input_ids"]
    prompt_lens = _prompt_lengths(micro_batch)
    if not input_ids.is_nested or prompt_lens is None or bool((prompt_lens < 1).any()):
        return None
    start = int(prompt_lens.min()) - 1
    return start if start > 0 else None


def note_engaged(start: int, max_len: int) -> None:
    """Say once per process that the path is taken, and on what (a run's log then shows it really ran)."""
    global _engaged
    if not _engaged:
        _engaged = True
        logger.info(
            "%s: first batch keeps positions %d..%d of %d (%s=0 computes all of them, as verl does)",
            ENGAGED_MESSAGE, start, max_len - 1, max_len, ENV,
        )  # fmt: skip


def model_keeps_logits(module: torch.nn.Module) -> bool:
    """Whether the (possibly FSDP-wrapped) model's forward takes Hugging Face's ``logits_to_keep``."""
    inner = getattr(module, "_fsdp_wrapped_module", module)  # FSDP1 wraps; FSDP2 keeps the model's class
    return "logits_to_keep" in inspect.signature(type(inner).forward).parameters


def nested_from_tail(tail: torch.Tensor, start: int, offsets: torch.Tensor) -> torch.Tensor:
    """Lay per-position values of the kept tail out as verl's nested per-token tensor, zeros before ``start``.

    Args:
        tail: (bsz, max_len - start) values at positions ``start .. max_len - 1`` of the right-padded rows.
        start: first kept position.
        offsets: (bsz + 1,) the nested ``input_ids``' offsets (row i has ``offsets[i+1] - offsets[i]`` tokens).

    Returns:
        nested (bsz, j1) tensor with ``offsets``: row i is ``[0] * start + tail[i]``, cut to its length.
    """
    full = torch.cat([tail.new_zeros(tail.shape[0], start), tail], dim=1)
    lengths = offsets.diff().tolist()
    values = torch.cat([full[i, :n] for i, n in enumerate(lengths)])
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def entropy_needs_grad(loss_function: Any) -> bool:
    """False only for verl's ``ppo_loss`` bound to an actor config with ``entropy_coeff == 0``."""
    if not isinstance(loss_function, functools.partial) or loss_function.func.__name__ != "ppo_loss":
        return True
    config = loss_function.keywords.get("config")
    coeff = getattr(config, "entropy_coeff", None)
    return not (isinstance(coeff, int | float) and float(coeff) == 0.0)


def response_outputs(engine: Any, output: Any, output_args: dict, micro_batch: Any, loss_function: Any) -> dict:
    """``prepare_model_outputs`` for a micro-batch whose logits start at ``output_args[KEEP_FROM]``.

    Args:
        engine: verl's ``FSDPEngineWithLMHead``.
        output: the model's output; ``logits`` (bsz, max_len - start, vocab).
        output_args: from ``prepare_model_inputs``: ``temperature`` (bsz,), ``temperature_is_one``, ``KEEP_FROM``.
        micro_batch: the micro-batch; ``input_ids`` nested (bsz, j1).
        loss_function: the loss verl will apply (decides whether the entropy needs a gradient).

    Returns:
        ``{"log_probs": nested (bsz, j1), "entropy": nested (bsz, j1) if asked for}``, as verl's padded branch.
    """
    import verl.utils.torch_functional as verl_F
    from torch.distributed.tensor import DTensor
    from verl.workers.engine.fsdp import transformer_impl

    start = output_args[KEEP_FROM]
    input_ids = micro_batch["input_ids"]
    logits = output.logits
    if isinstance(logits, DTensor):  # tensor parallel: vocab-sharded, gathered as verl does
        logits = logits.full_tensor()
    temperature = output_args["temperature"].unsqueeze(-1).unsqueeze(-1)
    logits = transformer_impl._scale_logits_by_temperature(
        logits, temperature, is_unit_temperature=output_args.get("temperature_is_one", False)
    )
    bsz, kept, vocab = logits.shape
    # Position t scores token t + 1; the label at a row's last position is never read (as in verl's roll).
    padded = torch.nested.to_padded_tensor(input_ids, padding=0, output_size=(bsz, start + kept))
    labels = torch.roll(padded, shifts=-1, dims=1)[:, start:]
    log_probs = transformer_impl.logprobs_from_logits(logits=logits.reshape(-1, vocab), labels=labels.reshape(-1))
    offsets = input_ids.offsets()
    model_output = {"log_probs": nested_from_tail(log_probs.view(bsz, kept), start, offsets)}
    if _flag(micro_batch, "calculate_entropy"):
        with nullcontext() if entropy_needs_grad(loss_function) else torch.no_grad():
            if torch.is_grad_enabled() and engine.engine_config.entropy_checkpointing:
                entropy = torch.utils.checkpoint.checkpoint(verl_F.entropy_from_logits, logits)
            else:
                entropy = verl_F.entropy_from_logits(logits)
        model_output["entropy"] = nested_from_tail(entropy, start, offsets)
    return model_output
