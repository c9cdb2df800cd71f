"""Hugging Face backend (CPU or one GPU), decoding with the ``hf`` rollout's batched generator.

There is one Hugging Face decoding loop in this package, :class:`verl_agrae.rollout.generator.HFGenerator`
(batched prefill, KV cache, finished rows dropped from the batch); this module only adds model loading,
prompt formatting and the evaluation's output records on top of it.

Reproducibility: every sample is its own generator request with the seed
``derive_seed(base seed, problem index, sample index)``, and seeded requests draw from their own torch
generator. A sample therefore does not depend on what else is in its batch, on ``batch_size`` or on
``shard_size``, so a shard regenerated after a crash is identical to the one an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from verl_agrae.eval.datasets import EvalProblem
from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig, derive_seed
from verl_agrae.rollout.generator import FINISH_STOP, GenerationRequest, HFGenerator
from verl_agrae.rollout.sampling import SamplingOptions

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}


class HFBackend:
    """Sample with a ``transformers`` causal LM through :class:`~verl_agrae.rollout.generator.HFGenerator`.

    Args:
        model_dir: local Hugging Face model directory.
        gen: generation settings (``device``, ``dtype``, ``batch_size``: sequences decoded together).
    """

    name = "hf"

    def __init__(self, model_dir: str | os.PathLike[str], gen: GenerationConfig) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.gen = gen
        device = gen.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if gen.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        elif gen.dtype in _DTYPES:
            dtype = getattr(torch, _DTYPES[gen.dtype])
        else:
            raise ValueError(f"generation.dtype must be auto or one of {sorted(_DTYPES)}, got {gen.dtype!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"  # generated tokens must follow the prompt directly
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        load_kwargs: dict[str, Any] = {"dtype": dtype}
        gguf = sorted(Path(model_dir).glob("*.gguf"))
        if gguf and not any(Path(model_dir).glob("*.safetensors")):
            load_kwargs["gguf_file"] = gguf[0].name
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError(f"{model_dir}: neither the tokenizer nor the generation config defines an EOS token")
        self.eos_ids = sorted(eos_ids)
        # Every request is seeded, so the generator's shared seed (for unseeded requests) is never used.
        self.generator = HFGenerator(self.model, eos_token_ids=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id)

    def _prompt_text(self, problem: EvalProblem) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(problem.prompt, add_generation_prompt=True, tokenize=False)
        # Base models without a chat template get the user turns as plain text.
        return "\n".join(m["content"] for m in problem.prompt) + "\n"

    def generate(self, problems: list[EvalProblem], start: int, sampling: SamplingConfig) -> list[list[dict[str, Any]]]:
        """Sample ``sampling.n`` responses for each problem of one shard.

        Args:
            problems: the shard's problems (benchmark indices ``start ..``).
            start: benchmark index of the first problem (seeds derive from it).
            sampling: sampling settings.

        Returns:
            Per problem, n dicts with ``text``, ``n_tokens``, ``finish_reason`` (``stop``/``length``).
        """
        prompt_ids = [self.tokenizer(self._prompt_text(p), add_special_tokens=False)["input_ids"] for p in problems]
        # Only temperature and top_p, as in the paper's protocol: nothing from the model's own
        # generation_config.json (top_k=50, repetition penalties...) applies, since the generator reads none of it.
        options = {"max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p}
        jobs = [(i, s) for i in range(len(problems)) for s in range(sampling.n)]
        out: list[list[dict[str, Any]]] = [[None] * sampling.n for _ in problems]  # type: ignore[list-item]
        bs = self.gen.batch_size
        for lo in range(0, len(jobs), bs):
            chunk = jobs[lo : lo + bs]
            requests = [
                GenerationRequest(
                    prompt_ids[i], SamplingOptions(**options, seed=derive_seed(sampling.seed, start + i, s))
                )
                for i, s in chunk
            ]
            for (i, s), (result,) in zip(chunk, self.generator.generate(requests), strict=True):
                # token_ids end with the EOS that stopped the response (counted in n_tokens, not in the text).
                text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
                reason = "stop" if result.finish_reason == FINISH_STOP else "length"
                out[i][s] = {"text": text, "n_tokens": len(result.token_ids), "finish_reason": reason}
        return out

    def close(self) -> None:
        """Free the model."""
        del self.generator
        del self.model
