"""Per-request sampling options and the batched next-token choice of the ``hf`` rollout.

verl's agent loop sends vLLM-style sampling dictionaries (``temperature``, ``top_p``, ``top_k`` with ``-1``
meaning "off", ``logprobs``, ``repetition_penalty``, optional ``max_tokens``, ``seed``, ``stop_token_ids``,
``ignore_eos``). Requests gathered into one batch may carry different options, so every option is applied
per row.

Log-probs follow verl's actor convention, not the sampler's: the actor recomputes
``log_softmax(logits / temperature)`` over the full vocabulary, without top-k / top-p truncation or
repetition penalty. Reporting the same quantity keeps ``training/rollout_probs_diff_*`` at numerical
noise instead of measuring the truncation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["SamplingOptions", "choose_next_tokens"]

# Keys verl (or an OpenAI-style client) may send that change nothing for this backend.
_IGNORED_KEYS = frozenset(
    {
        "logprobs_mode",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
        "detokenize",
        "prompt_logprobs",
        "extra_args",
    }
)


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling options of one request.

    Attributes:
        max_tokens: most tokens to generate (>= 1).
        temperature: 0 means greedy decoding.
        top_p: nucleus mass in (0, 1]; 1 disables.
        top_k: keep the k most likely tokens; <= 0 disables (vLLM's -1 and HF's 0 both mean off).
        repetition_penalty: HF/vLLM-style penalty on tokens already in prompt or output; 1 disables.
        seed: per-request seed; the same seed and prompt give the same sample whatever else is batched.
        n: number of samples for the prompt.
        logprobs: return the log-prob of each sampled token.
        stop_token_ids: extra tokens that end generation (kept in the output, like EOS).
        ignore_eos: keep generating past EOS (``stop_token_ids`` still stop).
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if int(self.max_tokens) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if int(self.n) < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_request(cls, params: Mapping[str, Any], default_max_tokens: int) -> SamplingOptions:
        """Build options from a verl/vLLM sampling dictionary.

        Args:
            params: the request's ``sampling_params``.
            default_max_tokens: used when neither ``max_tokens`` nor ``max_new_tokens`` is given.

        Raises:
            ValueError: on an unknown key or an out-of-range value, naming it.
        """
        p = dict(params)
        max_tokens = p.pop("max_tokens", None)
        max_new_tokens = p.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = max_new_tokens if max_new_tokens is not None else default_max_tokens
        logprobs = p.pop("logprobs", False)
        stop = p.pop("stop_token_ids", None) or ()
        top_k = p.pop("top_k", None)
        seed = p.pop("seed", None)
        kwargs = {
            "max_tokens": int(max_tokens),
            "temperature": float(p.pop("temperature", 1.0)),
            "top_p": float(p.pop("top_p", 1.0)),
            "top_k": -1 if top_k is None else int(top_k),
            "repetition_penalty": float(p.pop("repetition_penalty", 1.0) or 1.0),
            "seed": None if seed is None else int(seed),
            "n": int(p.pop("n", 1)),
            # vLLM takes an int (number of top alternatives); any non-None/False value asks for log-probs.
            "logprobs": logprobs is not None and logprobs is not False,
            "stop_token_ids": tuple(int(t) for t in stop),
            "ignore_eos": bool(p.pop("ignore_eos", False)),
        }
        for key in _IGNORED_KEYS:
            p.pop(key, None)
        if p:
            raise ValueError(f"unsupported sampling parameter(s) for the hf rollout: {sorted(p)}")
        return cls(**kwargs)


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """HF/vLLM repetition penalty: divide positive, multiply negative logits of tokens seen so far.

    Args:
        logits: ``(B, V)`` float32.
        seen: ``(B, V)`` bool, tokens present in the prompt or output.
        penalty: ``(B,)`` float32.
    """
    pen = penalty[:, None].expand_as(logits)
    penalised = torch.where(logits > 0, logits / pen, logits * pen)
    return torch.where(seen, penalised, logits)


def _truncate(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and nucleus.

    Args:
        scaled: ``(B, V)`` temperature-scaled logits.
        top_k: ``(B,)`` long, <= 0 disables.
        top_p: ``(B,)`` float, 1 disables.

    Returns:
        ``(B, V)`` logits with excluded tokens at -inf (at least one token kept per row).
    """
    vocab = scaled.shape[-1]
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    drop = ranks >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    # Mass strictly before each token; the first token is always kept.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    # top_p = 1 must keep everything, even where float cumsums creep past 1.
    drop = drop | ((mass_before > top_p[:, None]) & (top_p[:, None] < 1))
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)


def choose_next_tokens(
    logits: torch.Tensor,
    options: list[SamplingOptions],
    generators: list[torch.Generator | None],
    shared_generator: torch.Generator,
    seen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token of each row and its log-prob under verl's actor convention.

    Args:
        logits: ``(B, V)`` last-position logits (any float dtype).
        options: per-row options (length B).
        generators: per-row generator of seeded requests, None for unseeded rows. Rows of the same
            request share one generator and draw in row order, so a seeded request's samples do not
            depend on what else is in the batch.
        shared_generator: generator for unseeded rows.
        seen: ``(B, V)`` bool mask of tokens in prompt or output, required when any row has a
            repetition penalty.

    Returns:
        ``(tokens, log_probs)``: ``(B,)`` long and ``(B,)`` float32, where log_probs is
        ``log_softmax(logits / T)[token]`` (T = 1 for greedy rows).
    """
    logits = logits.float()
    device = logits.device
    temps = torch.tensor([o.temperature if o.temperature > 0 else 1.0 for o in options], device=device)
    scaled = logits / temps[:, None]
    log_probs = torch.log_softmax(scaled, dim=-1)

    sample_logits = scaled
    penalties = [o.repetition_penalty for o in options]
    if any(p != 1.0 for p in penalties):
        if seen is None:
            raise ValueError("repetition_penalty needs the mask of seen tokens")
        penalised = _apply_repetition_penalty(logits, seen, torch.tensor(penalties, device=device))
        sample_logits = penalised / temps[:, None]

    tokens = torch.empty(len(options), dtype=torch.long, device=device)
    greedy_rows = [i for i, o in enumerate(options) if o.greedy]
    sampled_rows = [i for i, o in enumerate(options) if not o.greedy]
    if greedy_rows:
        idx = torch.tensor(greedy_rows, device=device)
        tokens[idx] = sample_logits[idx].argmax(dim=-1)
    if sampled_rows:
        idx = torch.tensor(sampled_rows, device=device)
        rows = sample_logits[idx]
        top_k = torch.tensor([options[i].top_k for i in sampled_rows], device=device)
        top_p = torch.tensor([options[i].top_p for i in sampled_rows], device=device, dtype=torch.float32)
        if bool((top_k > 0).any()) or bool((top_p < 1).any()):
            rows = _truncate(rows, top_k, top_p)
        probs = torch.softmax(rows, dim=-1)
        picked = torch.empty(len(sampled_rows), dtype=torch.long, device=device)
        unseeded = [j for j, i in enumerate(sampled_rows) if generators[i] is None]
        if unseeded:
            u = torch.tensor(unseeded, device=device)
            picked[u] = torch.multinomial(probs[u], 1, generator=shared_generator).squeeze(-1)
        for j, i in enumerate(sampled_rows):
            if generators[i] is not None:
                picked[j] = torch.multinomial(probs[j], 1, generator=generators[i]).squeeze(-1)
        tokens[idx] = picked
    chosen_log_probs = log_probs.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, chosen_log_probs
