"""Build a tiny random-init causal LM and a byte-level BPE tokenizer locally (no downloads).

Tests, benchmarks and CPU smoke runs need a real Hugging Face model directory that verl, the `hf`
rollout and the evaluator can load like any checkpoint. This builds one in about a second: a
Llama-architecture model with ~100k parameters and a byte-level BPE tokenizer (newline is a single
token, which verl's chat-template handling requires) with a ChatML chat template.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

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


def build_tiny_model(
    path: str | Path,
    seed: int = 0,
    vocab_size: int = 384,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 1024,
) -> Path:
    """Create (or reuse) a tiny Llama-style model + tokenizer directory at ``path``.

    Args:
        path: output directory; reused as is when it already holds a model built with the same arguments.
        seed: seeds the tokenizer corpus and the weight initialisation.
        vocab_size: BPE vocabulary size (including the 256 byte symbols and the special tokens).
        hidden_size: model width.
        num_layers: number of decoder layers.
        max_position_embeddings: longest sequence the model accepts.

    Returns:
        ``Path`` of the model directory (``AutoModelForCausalLM`` / ``AutoTokenizer`` loadable).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    spec = {
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "max_position_embeddings": max_position_embeddings,
    }
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

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(out)
    marker.write_text(json.dumps(spec))
    return out
