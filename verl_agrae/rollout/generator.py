"""Batched autoregressive decoding with a Hugging Face causal LM (the compute core of the ``hf`` rollout).

One :meth:`HFGenerator.generate` call decodes many requests together: prompts are left-padded into one
batch, the prompt is prefilled once, then one token per row per step is decoded with the KV cache. Rows that
finish (EOS, a stop token or their own ``max_tokens``) are dropped from the batch and the cache, so a long
response does not make short ones pay for padding. Every request keeps its own sampling options, seed and
length limit (see :mod:`verl_agrae.rollout.sampling`).

No Ray, no asyncio, no verl here: the server (:mod:`verl_agrae.rollout.server`) adds those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from verl_agrae.rollout.sampling import SamplingOptions, choose_next_tokens

__all__ = ["GenerationRequest", "GenerationResult", "HFGenerator"]

logger = logging.getLogger(__name__)

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt and its sampling options."""

    prompt_ids: list[int]
    options: SamplingOptions


@dataclass
class GenerationResult:
    """One sampled continuation.

    Attributes:
        token_ids: generated tokens, including the EOS/stop token that ended it.
        log_probs: per-token log-probs (same length as ``token_ids``), or None when not requested.
        finish_reason: ``"stop"`` (EOS or stop token), ``"length"`` (max_tokens) or ``"abort"``.
    """

    token_ids: list[int]
    log_probs: list[float] | None
    finish_reason: str


class HFGenerator:
    """Decode batches of requests with one model.

    Args:
        model: a causal LM (``AutoModelForCausalLM``), already on its device and in eval mode.
        eos_token_ids: tokens that end a response unless the request sets ``ignore_eos``.
        pad_token_id: token used for left padding (never attended to).
        seed: seeds the generator used by requests without their own seed.
        min_shared_prefix: shortest prefix common to all prompts of a batch that is prefilled once for all
            (shorter ones are not worth the extra forward call).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eos_token_ids: Iterable[int],
        pad_token_id: int,
        seed: int = 0,
        min_shared_prefix: int = 8,
    ):
        self.model = model
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.min_shared_prefix = int(min_shared_prefix)
        self.shared_generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.num_batches = 0
        """Number of :meth:`generate` calls so far (what batching saves)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reseed(self, seed: int) -> None:
        """Reset the generator of unseeded requests (the device may have changed since construction)."""
        self.shared_generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Run the prompts through the model once and return the state decoding starts from.

        Work shared between rows is done once: identical prompts (verl sends each prompt ``rollout.n`` times)
        are prefilled once, and a prefix common to all prompts (system prompt, chat template) is prefilled
        once for the whole batch, its KV cache then copied to every row. The remaining suffixes are
        left-padded after the shared prefix; positions count real tokens only, as verl's actor does when it
        recomputes log-probs, so every row sees exactly the positions and context it would see alone.

        Args:
            prompts: one token list per row (B rows).

        Returns:
            ``(logits, cache, mask, last_pos)``: next-token logits ``(B, V)``, the KV cache (B rows), the
            attention mask ``(B, T)`` and the position of each row's last prompt token ``(B,)``.
        """
        device = self.device
        unique: dict[tuple[int, ...], int] = {}
        row_to_unique = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        uniq = [list(p) for p in unique]
        n_uniq = len(uniq)

        shared = 0
        if n_uniq > 1:
            shared = _common_prefix_len(uniq)
            shared = min(shared, min(len(p) for p in uniq) - 1)  # every row keeps >= 1 token to prefill
            if shared < self.min_shared_prefix:
                shared = 0

        cache = None
        if shared:
            prefix = torch.tensor([uniq[0][:shared]], dtype=torch.long, device=device)
            out = self.model(
                input_ids=prefix,
                attention_mask=torch.ones_like(prefix),
                position_ids=torch.arange(shared, device=device)[None, :],
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
            cache.batch_select_indices(torch.zeros(n_uniq, dtype=torch.long, device=device))

        suffixes = [p[shared:] for p in uniq]
        width = max(len(x) for x in suffixes)
        input_ids = torch.full((n_uniq, width), self.pad_token_id, dtype=torch.long)
        suffix_mask = torch.zeros((n_uniq, width), dtype=torch.long)
        for i, ids in enumerate(suffixes):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            suffix_mask[i, width - len(ids) :] = 1
        input_ids, suffix_mask = input_ids.to(device), suffix_mask.to(device)
        positions = shared + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([suffix_mask.new_ones((n_uniq, shared)), suffix_mask], dim=-1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits, cache, last_pos = out.logits[:, -1, :], out.past_key_values, positions[:, -1]
        if row_to_unique != list(range(n_uniq)):
            idx = torch.tensor(row_to_unique, dtype=torch.long, device=device)
            cache.batch_select_indices(idx)
            logits, mask, last_pos = logits[idx], mask[idx], last_pos[idx]
        return logits, cache, mask, last_pos

    @torch.inference_mode()
    def generate(
        self,
        requests: list[GenerationRequest],
        should_abort: Callable[[], bool] | None = None,
    ) -> list[list[GenerationResult]]:
        """Decode all requests in one batch.

        Args:
            requests: prompts with their options; ``options.n`` samples are drawn per request.
            should_abort: polled before each decoding step; when it returns True every unfinished row
                stops with ``finish_reason="abort"`` and keeps the tokens generated so far.

        Returns:
            For each request, its ``n`` results in order.
        """
        if not requests:
            return []
        self.num_batches += 1
        device = self.device
        if self.shared_generator.device != device:
            # The model moved (sleep/wake_up between devices): keep drawing from a generator on its device.
            self.shared_generator = torch.Generator(device=device).manual_seed(
                int(self.shared_generator.initial_seed())
            )

        # Expand requests into rows (n samples each); seeded requests share one generator across their rows.
        row_req: list[int] = []
        row_opts: list[SamplingOptions] = []
        row_gens: list[torch.Generator | None] = []
        for r, req in enumerate(requests):
            if not req.prompt_ids:
                raise ValueError(f"request {r} has an empty prompt")
            gen = None
            if req.options.seed is not None:
                gen = torch.Generator(device=device).manual_seed(req.options.seed)
            for _ in range(req.options.n):
                row_req.append(r)
                row_opts.append(req.options)
                row_gens.append(gen)
        num_rows = len(row_req)
        stop_sets = [
            frozenset(o.stop_token_ids) | (frozenset() if o.ignore_eos else self.eos_token_ids) for o in row_opts
        ]

        prompts = [requests[r].prompt_ids for r in row_req]
        logits, cache, mask, last_pos = self._prefill(prompts)

        seen = None
        if any(o.repetition_penalty != 1.0 for o in row_opts):
            vocab = self.model.get_output_embeddings().weight.shape[0]
            seen = torch.zeros((num_rows, vocab), dtype=torch.bool, device=device)
            for i, ids in enumerate(prompts):
                seen[i, torch.tensor(ids, device=device)] = True

        tokens_out: list[list[int]] = [[] for _ in range(num_rows)]
        lps_out: list[list[float]] = [[] for _ in range(num_rows)]
        finish: list[str | None] = [None] * num_rows
        active = list(range(num_rows))  # global row index of each row of the current batch tensors

        while active:
            if should_abort is not None and should_abort():
                for g in active:
                    finish[g] = FINISH_ABORT
                break
            tokens, lps = choose_next_tokens(
                logits,
                [row_opts[g] for g in active],
                [row_gens[g] for g in active],
                self.shared_generator,
                seen,
            )
            token_list, lp_list = tokens.tolist(), lps.tolist()
            keep: list[int] = []
            for b, g in enumerate(active):
                tok = token_list[b]
                tokens_out[g].append(tok)
                lps_out[g].append(lp_list[b])
                if tok in stop_sets[g]:
                    finish[g] = FINISH_STOP
                elif len(tokens_out[g]) >= row_opts[g].max_tokens:
                    finish[g] = FINISH_LENGTH
                else:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(active):
                # Drop finished rows everywhere so the remaining steps cost only what is still decoding.
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                mask, last_pos, tokens = mask[idx], last_pos[idx], tokens[idx]
                if seen is not None:
                    seen = seen[idx]
                active = [active[b] for b in keep]
            if seen is not None:
                seen.scatter_(1, tokens[:, None], True)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=last_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
            cache = out.past_key_values

        results: list[list[GenerationResult]] = [[] for _ in requests]
        for g, r in enumerate(row_req):
            results[r].append(
                GenerationResult(
                    token_ids=tokens_out[g],
                    log_probs=lps_out[g] if row_opts[g].logprobs else None,
                    finish_reason=finish[g] or FINISH_ABORT,
                )
            )
        return results


def _common_prefix_len(seqs: list[list[int]]) -> int:
    shortest = min(len(s) for s in seqs)
    for i in range(shortest):
        tok = seqs[0][i]
        if any(s[i] != tok for s in seqs):
            return i
    return shortest
