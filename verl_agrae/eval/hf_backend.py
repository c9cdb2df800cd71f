"""Hugging Face ``generate`` backend (CPU or one GPU).

Reproducibility: each micro-batch reseeds torch with a seed derived from (base seed, shard start,
micro-batch index), and a shard's micro-batches are always the same, so a shard regenerated after a
crash is identical to the one an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from verl_agrae.eval.datasets import EvalProblem
from verl_agrae.eval.sampling import GenerationConfig, SamplingConfig, derive_seed

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}


class HFBackend:
    """Sample with ``transformers`` ``generate``.

    Args:
        model_dir: local Hugging Face model directory.
        gen: generation settings (``device``, ``dtype``, ``batch_size``).
    """

    name = "hf"

    def __init__(self, model_dir: str | os.PathLike[str], gen: GenerationConfig) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
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
        from transformers import GenerationConfig as HFGenerationConfig

        torch = self.torch
        prompts = [self._prompt_text(p) for p in problems]
        jobs = [(i, s) for i in range(len(problems)) for s in range(sampling.n)]
        out: list[list[dict[str, Any]]] = [[None] * sampling.n for _ in problems]  # type: ignore[list-item]
        greedy = sampling.temperature == 0
        # A fresh config: the model's own generation_config.json (top_k=50, repetition penalties...) must not
        # leak into the paper's protocol, which is temperature + top_p only.
        cfg = HFGenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=sampling.max_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        bs = self.gen.batch_size
        for b, lo in enumerate(range(0, len(jobs), bs)):
            chunk = jobs[lo : lo + bs]
            enc = self.tokenizer(
                [prompts[i] for i, _ in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            torch.manual_seed(derive_seed(sampling.seed, start, b))
            with torch.no_grad():
                seqs = self.model.generate(**enc, generation_config=cfg)
            new = seqs[:, enc["input_ids"].shape[1] :].cpu()
            is_eos = torch.isin(new, torch.tensor(self.eos_ids))
            for row, (i, s) in enumerate(chunk):
                hits = is_eos[row].nonzero()
                if len(hits):
                    length, reason = int(hits[0]) + 1, "stop"
                else:
                    length, reason = new.shape[1], "length"
                text = self.tokenizer.decode(new[row, :length], skip_special_tokens=True)
                out[i][s] = {"text": text, "n_tokens": length, "finish_reason": reason}
        return out

    def close(self) -> None:
        """Free the model."""
        del self.model
