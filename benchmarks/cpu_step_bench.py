"""One RL step on the CPU: our verl run (verl's trainer + CPU platform + `hf` rollout) vs TRL's GRPOTrainer.

Same tiny model (built locally), same prompts, batch, group size, response length, fp32, KL to a reference
model on both sides, in one process run. Prints per-phase times and the step-time ratio; step 1 of each side
is warm-up and excluded. The verl side runs with the CPU default (bypass mode: the rollout's log-probs are the
old log-probs; logits for response positions only), again with verl's separate old-log-prob pass (what that pass
costs), again with verl's full-length logits (``VERL_AGRAE_RESPONSE_LOGITS=0``: what computing prompt positions'
logits costs), and once more with the rollout server limited to one sequence per ``generate`` call (batched vs
one-at-a-time generation speed).

    python benchmarks/cpu_step_bench.py                 # defaults: 8 prompts x 4 = 32 responses x 32 tokens
    python benchmarks/cpu_step_bench.py --steps 4 --prompts 8 --n 4 --response-length 64
    python benchmarks/cpu_step_bench.py --model demo --prompts 4 --n 4   # SmolLM2-135M, compute-bound

Goals: our step no slower than TRL's (ratio <= 1); batched generation >= 3x faster than one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# verl's phase names (timing_s/<name>) -> our label
VERL_PHASES = {
    "gen": "generation",
    "old_log_prob": "old log-probs",
    "ref": "ref log-probs",
    "reward": "reward",
    "adv": "advantage",
    "update_actor": "update",
    "update_weights": "weight sync",
    "step": "whole step",
}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def run_verl(model: Path, data: Path, work: Path, args: argparse.Namespace, tag: str, extra: list[str]) -> dict:
    from verl_agrae.testing.tiny_run import tiny_run_argv
    from verl_agrae.trainer.main import main

    run_dir = work / f"verl_{tag}"
    argv = tiny_run_argv(
        "cpu",
        model,
        data,
        run_dir,
        "data.max_prompt_length=192",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.optim.lr=1e-5",
        "run.plots=false",
        *extra,
        steps=args.steps,
        prompts=args.prompts,
        n=args.n,
        response_length=args.response_length,
    )
    started = time.monotonic()
    code = main(argv)
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"verl run {tag} failed (exit {code}); see {run_dir}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] >= 2 and "timing_s/step" in r]  # step 1 is warm-up
    phases = {label: _mean([r.get(f"timing_s/{k}", 0.0) for r in rows]) for k, label in VERL_PHASES.items()}
    return {"phases": phases, "steps_timed": len(rows), "wall_s": wall}


def run_trl(model: Path, data: Path, work: Path, args: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    rows = pq.read_table(data / "train.parquet").to_pylist()
    dataset = Dataset.from_list([{"prompt": list(r["prompt"])} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="sdpa")

    from verl_agrae.testing.rewards import parity_reward

    def reward(completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [parity_reward(None, t, None)["score"] for t in texts]

    step_times: list[float] = []
    logs: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.t)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs:
                logs_copy = dict(logs)
                logs_list.append(logs_copy)

    logs_list = logs
    config = GRPOConfig(
        output_dir=str(work / "trl"),
        use_cpu=True,
        per_device_train_batch_size=args.prompts * args.n,
        num_generations=args.n,
        max_completion_length=args.response_length,
        max_steps=args.steps,
        learning_rate=1e-5,
        beta=0.001,  # KL to a reference model, as on the verl side
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    started = time.monotonic()
    trainer.train()
    wall = time.monotonic() - started
    timed = step_times[1:]
    prof = {}
    for row in logs[1:]:
        for k, v in row.items():
            if k.startswith("profiling/"):
                prof.setdefault(k.split(": ", 1)[-1], []).append(float(v))
    phases = {k: _mean(v) for k, v in prof.items()}
    phases["whole step"] = _mean(timed)
    return {"phases": phases, "steps_timed": len(timed), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="steps per side (the first is warm-up)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="responses per prompt")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=256, help="tiny model width")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--model",
        default=None,
        help="a Hugging Face model directory, or `demo` for the CPU demo's SmolLM2-135M-Instruct, instead of "
        "the tiny random model (where verl's fixed per-step costs dominate)",
    )
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-one-at-a-time", action="store_true")
    parser.add_argument("--skip-separate-pass", action="store_true", help="no verl run with bypass_mode=False")
    parser.add_argument("--skip-full-logits", action="store_true", help="no verl run with full-length logits")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from verl_agrae.data.arithmetic import write_arithmetic_dataset
    from verl_agrae.testing.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="cpu_step_bench_"))
    if args.model == "demo":
        from verl_agrae.demo_model import ensure_demo_model

        model, described = ensure_demo_model(), "SmolLM2-135M-Instruct (the CPU demo's model)"
    elif args.model:
        model, described = Path(args.model), f"model {args.model}"
    else:
        model = build_tiny_model(work / "model", seed=0, hidden_size=args.hidden_size, num_layers=args.layers)
        described = f"tiny model {model} ({args.hidden_size} wide, {args.layers} layers)"
    data = work / "data"
    write_arithmetic_dataset(data, n_train=args.prompts * (args.steps + 1), n_val=4, seed=0)
    print(
        f"{described}; {args.prompts} prompts x {args.n} responses x {args.response_length} tokens; "
        f"{args.steps} steps (first = warm-up); {os.cpu_count()} cores"
    )

    results = {"verl": run_verl(model, data, work, args, "batched", [])}
    if not args.skip_separate_pass:
        results["verl_separate_pass"] = run_verl(
            model, data, work, args, "separate_pass", ["algorithm.rollout_correction.bypass_mode=False"]
        )
    if not args.skip_full_logits:
        env = "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_AGRAE_RESPONSE_LOGITS=0"
        results["verl_full_logits"] = run_verl(model, data, work, args, "full_logits", [env])
    if not args.skip_one_at_a_time:
        results["verl_one_at_a_time"] = run_verl(
            model, data, work, args, "one_at_a_time", ["+actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=1"]
        )
    if not args.skip_trl:
        results["trl"] = run_trl(model, data, work, args)

    print("\nper-phase mean seconds per step (after warm-up)")
    for side, res in results.items():
        print(f"  {side} ({res['steps_timed']} steps timed, whole run {res['wall_s']:.0f}s incl. start-up)")
        for phase, seconds in res["phases"].items():
            print(f"    {phase:<40} {seconds:8.3f}")
    ours = results["verl"]["phases"]["whole step"]
    if "trl" in results:
        trl = results["trl"]["phases"]["whole step"]
        print(f"\nstep time ratio verl/TRL: {ours / trl:.2f}  (goal <= 1.0; ours {ours:.2f}s, TRL {trl:.2f}s)")
        if "verl_separate_pass" in results:
            sep = results["verl_separate_pass"]["phases"]["whole step"]
            print(f"  with verl's separate old-log-prob pass: {sep / trl:.2f}  ({sep:.2f}s)")
        if "verl_full_logits" in results:
            full = results["verl_full_logits"]["phases"]["whole step"]
            print(f"  with verl's full-length logits: {full / trl:.2f}  ({full:.2f}s)")
    if "verl_one_at_a_time" in results:
        one = results["verl_one_at_a_time"]["phases"]["generation"]
        batched = results["verl"]["phases"]["generation"]
        print(
            f"generation of {args.prompts * args.n} responses: batched {batched:.2f}s, one at a time {one:.2f}s, "
            f"speed-up {one / batched:.1f}x (goal >= 3x)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
