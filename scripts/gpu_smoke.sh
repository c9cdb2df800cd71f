#!/usr/bin/env bash
# Two steps of verl's trainer with A-GRAE on one GPU (tiny local model, no downloads): vLLM rollout when
# vllm is installed, else our `hf` backend. Prints OK or FAIL with the reason; exit code 0 only on OK.
#
#   scripts/gpu_smoke.sh                    # uses the first visible GPU
#   scripts/gpu_smoke.sh --rollout hf       # force the Hugging Face rollout
#   CUDA_VISIBLE_DEVICES=3 scripts/gpu_smoke.sh --work /tmp/smoke actor_rollout_ref.actor.optim.lr=1e-4
#
# Needs: this package installed with a CUDA torch (pip install -e ".[vllm]" for vLLM). CI has no GPU and
# cannot run it.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "error: nvidia-smi not found: this check needs an NVIDIA GPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
exec "$PYTHON" -m verl_agrae.testing.gpu_smoke "$@"
