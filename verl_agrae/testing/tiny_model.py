"""Build a tiny random-init causal LM and a byte-level BPE tokenizer locally (no downloads).

Tests, benchmarks and CPU smoke runs need a real Hugging Face model directory that verl, the `hf`
rollout and the evaluator can load like any checkpoint. This builds one in about a second: a
Llama-architecture model with ~100k parameters and a byte-level BPE tokenizer (newline is a single
token, which verl's chat-template handling requires) with a ChatML chat template.

This is the package's one tiny-model builder: :func:`tiny_llama` makes the in-memory model (the rollout
self-check uses it directly, without a tokenizer), :func:`build_tiny_model` adds the tokenizer and saves a
directory, and ``std=...`` gives either one "lively" weights (see :func:`tiny_llama`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_model", "tiny_llama"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MARKER = "tiny_model.json"


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    """Arithmetic-flavoured text so that BPE merges cover digits, operators and the answer format."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(["+", "-", "*"])
        val = a + b if op == "+" else a - b if op == "-" else a * b
        out.append(f"What is {a} {op} {b}? The answer is \\boxed{{{val}}}.\nuser\nassistant\nsystem\n")
    return out


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 1024,
    *,
    seed: int = 0,
    std: float | None = None,
    **config: Any,
) -> LlamaForCausalLM:
    """A random-init Llama-architecture causal LM in memory (fp32, CPU, train mode as built).

    Args:
        vocab_size: vocabulary size.
        hidden_size: model width.
        num_layers: number of decoder layers.
        max_position_embeddings: longest sequence the model accepts.
        seed: seeds the initialisation (and the redraw when ``std`` is given).
        std: None keeps transformers' default init. A value redraws every weight matrix from
            N(0, std^2) ("lively" weights): the default init gives near-uniform logits whose greedy
            continuation just repeats the last token, which would make "batched equals one-at-a-time"
            checks trivially true. The redraw walks parameters in name order with its own generator, so
            it does not depend on how the model was created (built here or loaded from disk).
        **config: other ``LlamaConfig`` fields; defaults: ``intermediate_size=2*hidden_size``, 4 attention
            heads, 2 KV heads, tied embeddings.

    Returns:
        The model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "intermediate_size": 2 * hidden_size,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        **config,
    }
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            max_position_embeddings=max_position_embeddings,
            **settings,
        )
    )
    if std is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in sorted(model.named_parameters()):
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def build_tiny_model(
    path: str | Path,
    seed: int = 0,
    vocab_size: int = 384,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 1024,
    std: float | None = None,
) -> Path:
    """Create (or reuse) a tiny Llama-style model + tokenizer directory at ``path``.

    Args:
        path: output directory; reused as is when it already holds a model built with the same arguments.
        seed: seeds the tokenizer corpus and the weight initialisation.
        vocab_size: BPE vocabulary size (including the 256 byte symbols and the special tokens).
        hidden_size: model width.
        num_layers: number of decoder layers.
        max_position_embeddings: longest sequence the model accepts.
        std: None: transformers' default init; else "lively" weights drawn from N(0, std^2)
            (see :func:`tiny_llama`; the ``hf`` rollout tests use 0.5).

    Returns:
        ``Path`` of the model directory (``AutoModelForCausalLM`` / ``AutoTokenizer`` loadable).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(path)
    spec: dict[str, Any] = {
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "max_position_embeddings": max_position_embeddings,
    }
    if std is not None:  # absent for default-init models, so markers written before `std` existed still match
        spec["std"] = std
    marker = out / _MARKER
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return out
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.save_pretrained(out)

    model = tiny_llama(
        len(hf_tok),
        hidden_size,
        num_layers,
        max_position_embeddings,
        seed=seed,
        std=std,
        bos_token_id=None,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        torch_dtype="float32",
    )
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(out)
    marker.write_text(json.dumps(spec))
    return out
