"""Two training steps of verl's trainer with A-GRAE on one GPU, tiny local model, no downloads.

Run through ``scripts/gpu_smoke.sh`` (or ``python -m verl_agrae.testing.gpu_smoke``). It checks what a GPU
user needs before booking a cluster: the plugin loads in verl's processes, the GPU rollout (vLLM when
installed, else our ``hf`` backend) serves the actor's weights, and the run's metrics carry the A-GRAE
diagnostics with a small rollout/actor log-prob gap.

``--device cpu`` runs exactly the same configuration on the CPU (our platform and, with vLLM's CPU build
installed, verl's vLLM rollout): everything but CUDA, which is how CI checks this script.
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
#: The tiny model's width: 4 attention heads of 32, the smallest head vLLM's CPU attention supports.
HIDDEN_SIZE = 128


def smoke_argv(work: Path, rollout: str, steps: int, device: str, *extra: str) -> list[str]:
    """The training arguments of the smoke run (builds the tiny model and data under ``work`` once).

    Args:
        work: work directory (``model/``, ``data/``, ``run/``).
        rollout: ``vllm`` or ``hf``.
        steps: training steps.
        device: ``cuda`` (the real check) or ``cpu`` (the same configuration without CUDA).
        *extra: more overrides; later ones win.
    """
    from verl_agrae.data.arithmetic import write_arithmetic_dataset
    from verl_agrae.testing.tiny_model import build_tiny_model
    from verl_agrae.testing.tiny_run import tiny_run_argv

    model = build_tiny_model(work / "model", seed=0, hidden_size=HIDDEN_SIZE)
    if not (work / "data" / "train.parquet").is_file():
        write_arithmetic_dataset(work / "data", n_train=32, n_val=8, seed=0)
    return tiny_run_argv(
        "grpo_agrae",
        model,
        work / "data",
        work / "run",
        f"actor_rollout_ref.rollout.name={rollout}",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        # One GPU: verl's default of 2 would give 1 // 2 = 0 rollout replicas.
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.val_before_train=True",
        f"trainer.test_freq={steps}",
        *extra,
        steps=steps,
        device=device,
    )


def main(argv: list[str] | None = None) -> int:
    """Build a tiny model and data, run 2 steps of ``grpo_agrae`` on ``cuda``, check the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="work directory (default: a new temporary one)")
    parser.add_argument("--rollout", choices=("auto", "vllm", "hf"), default="auto", help="auto: vllm if installed")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the same run without CUDA (what CI checks)"
    )
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch (this check is for GPU machines; --device cpu runs it on the CPU)")
        return 2
    rollout = args.rollout
    if rollout == "auto":
        rollout = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"

    from verl_agrae.trainer.main import main as train

    work = Path(args.work or tempfile.mkdtemp(prefix="verl_agrae_gpu_smoke_"))
    run_dir = work / "run"
    argv_train = smoke_argv(work, rollout, args.steps, args.device, *extra)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"gpu smoke: {device_name}, rollout={rollout}, work dir {work}", flush=True)
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
