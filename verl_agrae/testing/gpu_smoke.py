"""Two training steps of verl's trainer with A-GRAE on one GPU, tiny local model, no downloads.

Run through ``scripts/gpu_smoke.sh`` (or ``python -m verl_agrae.testing.gpu_smoke``). It checks what a GPU
user needs before booking a cluster: the plugin loads in verl's processes, the GPU rollout (vLLM when
installed, else our ``hf`` backend) serves the actor's weights, and the run's metrics carry the A-GRAE
diagnostics with a small rollout/actor log-prob gap.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

#: bf16 (verl's GPU default) puts rollout and actor log-probs about this far apart on a tiny random model.
MAX_PROBS_DIFF = 0.5


def main(argv: list[str] | None = None) -> int:
    """Build a tiny model and data, run 2 steps of ``grpo_agrae`` on ``cuda``, check the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="work directory (default: a new temporary one)")
    parser.add_argument("--rollout", choices=("auto", "vllm", "hf"), default="auto", help="auto: vllm if installed")
    parser.add_argument("--steps", type=int, default=2)
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch (this check is for GPU machines; CPU runs: docs/cpu.md)")
        return 2
    rollout = args.rollout
    if rollout == "auto":
        rollout = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"

    from verl_agrae.data.arithmetic import write_arithmetic_dataset
    from verl_agrae.testing.tiny_model import build_tiny_model
    from verl_agrae.testing.tiny_run import tiny_run_argv
    from verl_agrae.trainer.main import main as train

    work = Path(args.work or tempfile.mkdtemp(prefix="verl_agrae_gpu_smoke_"))
    model = build_tiny_model(work / "model", seed=0)
    write_arithmetic_dataset(work / "data", n_train=32, n_val=8, seed=0)
    run_dir = work / "run"
    argv_train = tiny_run_argv(
        "grpo_agrae",
        model,
        work / "data",
        run_dir,
        f"actor_rollout_ref.rollout.name={rollout}",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.val_before_train=True",
        f"trainer.test_freq={args.steps}",
        *extra,
        steps=args.steps,
        device="cuda",
    )
    print(f"gpu smoke: {torch.cuda.get_device_name(0)}, rollout={rollout}, work dir {work}", flush=True)
    code = train(argv_train)
    if code != 0:
        print(f"FAIL: training exited with {code}; see the log above and {run_dir}")
        return 1
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    problems = []
    for step in range(1, args.steps + 1):
        row = rows.get(step, {})
        if "agrae/mu" not in row:
            problems.append(f"step {step}: no agrae/* metrics")
        diff = row.get("training/rollout_probs_diff_max")
        if diff is None or diff > MAX_PROBS_DIFF:
            problems.append(f"step {step}: training/rollout_probs_diff_max={diff}")
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        return 1
    last = rows[args.steps]
    print(
        f"OK: {args.steps} steps on {rollout}; agrae/mu={last['agrae/mu']:.3f}, "
        f"rollout_probs_diff_max={last['training/rollout_probs_diff_max']:.2e}, "
        f"step time {last.get('timing_s/step', float('nan')):.1f} s; results in {run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
