#!/usr/bin/env bash
# Qwen2.5-Math-7B on MATH train (7,500), validated on MATH-500, AIME 2024/2025 and AMC 2023: the paper's main setting.
# GPUs: 8 (one node of 8 x 80 GB). Rollout: vLLM, tensor parallel 2.
#
#   bash examples/math/qwen2.5-math-7b.sh dapo+agrae               # run here
#   LAUNCHER=slurm bash examples/math/qwen2.5-math-7b.sh grpo      # sbatch slurm/train.sbatch ...
#   DRY_RUN=1 bash examples/math/qwen2.5-math-7b.sh drgrpo         # print command + composed config
#
# Qwen2.5-Math-7B has a 4,096-token context: 1,024 prompt + 3,072 response tokens fill it exactly.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

method=${1:-}
agrae_require_method "$0" "$method"
shift
MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B}
agrae_paper_overrides "$MODEL" 2 "$DATA_DIR/math/train.parquet" "$(agrae_math_val_files)"
agrae_method_overrides "$method" 1.0
agrae_example_launch "qwen2.5-math-7b_${method/+/_}" "$@"
