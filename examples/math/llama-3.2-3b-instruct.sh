#!/usr/bin/env bash
# Llama-3.2-3B-Instruct on MATH train, validated on MATH-500, AIME 2024/2025 and AMC 2023 (the paper's non-Qwen variant).
# GPUs: 8 (one node of 8 x 40/80 GB). Rollout: vLLM, tensor parallel 1.
#
#   bash examples/math/llama-3.2-3b-instruct.sh drgrpo+agrae
#   DRY_RUN=1 bash examples/math/llama-3.2-3b-instruct.sh grpo
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

method=${1:-}
agrae_require_method "$0" "$method"
shift
MODEL=${MODEL:-meta-llama/Llama-3.2-3B-Instruct}
agrae_paper_overrides "$MODEL" 1 "$DATA_DIR/math/train.parquet" "$(agrae_math_val_files)"
agrae_method_overrides "$method" 1.0
agrae_example_launch "llama-3.2-3b-instruct_${method/+/_}" "$@"
