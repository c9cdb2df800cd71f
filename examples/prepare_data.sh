#!/usr/bin/env bash
# Convert the benchmark files you downloaded into verl RL parquet for the training examples.
# Nothing is downloaded. Inputs that are absent are skipped with a note; a bad file stops the script.
#
#   RAW_DIR=data/raw DATA_DIR=data bash examples/prepare_data.sh
#
# Expected layout under RAW_DIR (the same one the evaluation presets read, see examples/sweeps):
#   MATH/train/  MATH/test/        Hendrycks MATH: per-problem .json files, or train.jsonl / test.jsonl
#   math500/test.jsonl             HuggingFaceH4/MATH-500
#   aime2024.jsonl aime2025.jsonl amc23.jsonl
#   gsm8k/train.jsonl gsm8k/test.jsonl
#   dapo-math-17k.parquet          BytedTsinghua-SIA/DAPO-Math-17k
#   geometry3k/train.parquet geometry3k/test.parquet   hiyouga/geometry3k (images embedded)
#
# SETTINGS=authors writes the same files under DATA_DIR/authors with the system message of the A-GRAE authors'
# runs ("You are a helpful assistant."), which the training scripts read with SETTINGS=authors (docs/settings.md).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RAW_DIR=${RAW_DIR:-$repo/data/raw}
DATA_DIR=${DATA_DIR:-$repo/data}
VERL_AGRAE=${VERL_AGRAE:-verl-agrae}
extra=()
case ${SETTINGS:-ours} in
    ours) ;;
    authors)
        DATA_DIR=$DATA_DIR/authors
        extra=(--system-prompt "You are a helpful assistant.")
        ;;
    *)
        echo "SETTINGS must be ours or authors, got '$SETTINGS'" >&2
        exit 2
        ;;
esac

# convert NAME SPLIT OUTPUT INPUT...: the first existing input is converted.
convert() {
    local name=$1 split=$2 out=$3 input
    shift 3
    for input in "$@"; do
        if [[ -e "$RAW_DIR/$input" ]]; then
            "$VERL_AGRAE" data "$name" "$RAW_DIR/$input" -o "$DATA_DIR/$out" --split "$split" "${extra[@]}"
            return
        fi
    done
    echo "skip $name ($split): none of $* under $RAW_DIR" >&2
}

convert math train math/train.parquet MATH/train MATH/train.jsonl math/train.jsonl
convert math test math/test.parquet MATH/test MATH/test.jsonl math/test.jsonl
convert math500 test math500/test.parquet math500/test.jsonl MATH-500/test.jsonl math500.jsonl
convert aime2024 test aime2024/test.parquet aime2024.jsonl aime2024.parquet
convert aime2025 test aime2025/test.parquet aime2025.jsonl aime2025.parquet
convert amc23 test amc23/test.parquet amc23.jsonl amc23.parquet
convert gsm8k train gsm8k/train.parquet gsm8k/train.jsonl gsm8k/train.parquet
convert gsm8k test gsm8k/test.parquet gsm8k/test.jsonl gsm8k/test.parquet
convert dapo_math train dapo_math/train.parquet dapo-math-17k.parquet DAPO-Math-17k
convert geometry3k train geometry3k/train.parquet geometry3k/train.parquet geometry3k/train
convert geometry3k test geometry3k/test.parquet geometry3k/test.parquet geometry3k/test
