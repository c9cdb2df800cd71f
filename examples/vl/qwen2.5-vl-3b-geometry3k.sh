#!/usr/bin/env bash
# Qwen2.5-VL-3B-Instruct on Geometry3K (multimodal); A-GRAE with alpha = 0.5, as the authors use there.
# GPUs: 8 (one node of 8 x 80 GB). Rollout: vLLM, tensor parallel 1.
#
#   bash examples/vl/qwen2.5-vl-3b-geometry3k.sh grpo+agrae
#   DRY_RUN=1 bash examples/vl/qwen2.5-vl-3b-geometry3k.sh grpo
#
# Data: examples/prepare_data.sh converts Geometry3K's train/test files (images kept in the `images`
# column that verl's RLHFDataset reads). Geometry3K has 2,101 training problems: the paper's 1,024-prompt
# batch would give 2 steps per epoch, so this setting uses 512 prompts x 8 (our choice; the paper does not
# state the multimodal batch). Prompts carry image tokens: max prompt length 2,048, responses 2,048.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

method=${1:-}
agrae_require_method "$0" "$method"
shift
MODEL=${MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}
agrae_paper_overrides "$MODEL" 1 "$DATA_DIR/geometry3k/train.parquet" "$DATA_DIR/geometry3k/test.parquet" \
    512 2048 2048 128
AGRAE_OVERRIDES+=(data.image_key=images)
agrae_method_overrides "$method" 0.5
agrae_geometry3k_reward_overrides
agrae_example_launch "qwen2.5-vl-3b-geometry3k_${method/+/_}" "$@"
