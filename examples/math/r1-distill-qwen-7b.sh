#!/usr/bin/env bash
# DeepSeek-R1-Distill-Qwen-7B on MATH train, validated on MATH-500, AIME 2024/2025 and AMC 2023 (the paper's
# reasoning-model variant).
# GPUs: 8 (one node of 8 x 80 GB). Rollout: vLLM, tensor parallel 2.
#
#   bash examples/math/r1-distill-qwen-7b.sh grpo+agrae
#   DRY_RUN=1 bash examples/math/r1-distill-qwen-7b.sh dapo
#
# The distilled model thinks at length: with the paper's 3,072-token limit many responses are truncated
# (they score 0; under DAPO also the overlong penalty). Keep the limit to reproduce the paper; raise
# data.max_response_length (and ppo_max_token_len_per_gpu) for a stronger baseline.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

method=${1:-}
agrae_require_method "$0" "$method"
shift
MODEL=${MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-7B}
agrae_paper_overrides "$MODEL" 2 "$DATA_DIR/math/train.parquet" "$(agrae_math_val_files)"
agrae_method_overrides "$method" 1.0
agrae_example_launch "r1-distill-qwen-7b_${method/+/_}" "$@"
