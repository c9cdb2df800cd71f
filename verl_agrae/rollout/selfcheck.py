"""Self-check of the ``hf`` rollout's decoding core on whatever device is available (CPU or one GPU).

    python -m verl_agrae.rollout.selfcheck [--device auto] [--json out.json]

Builds a random Llama-style model in memory with :func:`verl_agrae.testing.tiny_model.tiny_llama`
(no downloads, no tokenizer), then checks on the device: batched greedy decoding equals one-at-a-time
decoding; returned log-probs equal a direct forward pass of the model (fp32); seeded sampling is
reproducible inside a batch; and times 32 responses one at a time vs batched. Only torch and transformers
are needed (no verl, no Ray), so it also runs on machines where verl is not installed. Exits non-zero when
a check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from verl_agrae.rollout.generator import GenerationRequest, HFGenerator
from verl_agrae.rollout.sampling import SamplingOptions


def _model(device: torch.device, hidden: int, layers: int, vocab: int, seed: int) -> torch.nn.Module:
    from verl_agrae.testing.tiny_model import tiny_llama

    model = tiny_llama(
        vocab,
        hidden,
        layers,
        2048,
        seed=seed,
        # Larger weights than the default init, so greedy text is not one repeated token.
        std=2.0 / hidden**0.5,
        intermediate_size=4 * hidden,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return model.to(device=device, dtype=torch.float32).eval()


def _direct_log_probs(model: torch.nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + response], device=device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    tgt = torch.tensor(response, device=device)[:, None]
    return torch.log_softmax(logits, dim=-1).gather(-1, tgt).squeeze(-1).cpu()


def run_selfcheck(device: str = "auto", hidden: int = 512, layers: int = 8, vocab: int = 8192) -> dict[str, Any]:
    """Run the checks; returns a report with ``ok`` (all checks passed) and the measurements."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model = _model(dev, hidden, layers, vocab, seed=0)
    gen = HFGenerator(model, eos_token_ids=[2], pad_token_id=0, seed=0)
    rng = random.Random(0)
    preamble = [rng.randrange(3, vocab) for _ in range(24)]
    prompts = [preamble + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))] for _ in range(8)]
    report: dict[str, Any] = {
        "device": str(dev),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
    import transformers

    report["transformers"] = transformers.__version__

    greedy = SamplingOptions(max_tokens=24, temperature=0, logprobs=True)
    batched = gen.generate([GenerationRequest(p, greedy) for p in prompts + prompts[:2]])  # duplicates too
    singles = [gen.generate([GenerationRequest(p, greedy)])[0][0] for p in prompts]
    report["greedy_batched_equals_single"] = all(
        b[0].token_ids == s.token_ids for b, s in zip(batched, singles + singles[:2], strict=True)
    )
    report["distinct_greedy_outputs"] = len({tuple(s.token_ids) for s in singles})
    report["max_logprob_gap_vs_forward"] = max(
        (_direct_log_probs(model, p, b[0].token_ids) - torch.tensor(b[0].log_probs)).abs().max().item()
        for p, b in zip(prompts, batched, strict=False)
    )
    seeded = SamplingOptions(max_tokens=16, temperature=1.0, top_p=0.9, seed=7, n=2)
    alone = gen.generate([GenerationRequest(prompts[0], seeded)])[0]
    crowd = gen.generate(
        [GenerationRequest(prompts[1], SamplingOptions(max_tokens=8)), GenerationRequest(prompts[0], seeded)]
    )[1]
    report["seeded_reproducible_in_batch"] = [r.token_ids for r in alone] == [r.token_ids for r in crowd]

    timing_prompts = [prompts[i % 8] for i in range(32)]
    opts = SamplingOptions(max_tokens=64, temperature=1.0, ignore_eos=True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen.generate([GenerationRequest(timing_prompts[0], SamplingOptions(max_tokens=4))])  # warm-up
    sync()
    start = time.perf_counter()
    for p in timing_prompts:
        gen.generate([GenerationRequest(p, opts)])
    sync()
    report["one_at_a_time_s"] = time.perf_counter() - start
    start = time.perf_counter()
    gen.generate([GenerationRequest(p, opts) for p in timing_prompts])
    sync()
    report["batched_s"] = time.perf_counter() - start
    report["speedup_32x64"] = report["one_at_a_time_s"] / report["batched_s"]
    report["ok"] = bool(
        report["greedy_batched_equals_single"]
        and report["max_logprob_gap_vs_forward"] < 1e-4
        and report["seeded_reproducible_in_batch"]
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run_selfcheck(args.device)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
