#!/usr/bin/env bash
# Submit a whole `verl-agrae compare` experiment: every (method, seed) training run as its own slurm/train.sbatch
# job, then (after all of them succeed) the evaluation sweep file, the evaluation as an array of one task per cell
# (slurm/eval_sweep.sbatch), and the report once the array has ended.
#
#   slurm/submit_compare.sh EXPERIMENT.yaml [extra sbatch options for the training jobs...]
#
# Variables:
#   AGRAE_EVAL_SBATCH     extra sbatch options for the evaluation cells (space-separated), e.g. "--gpus-per-node=1"
#   AGRAE_ARRAY_LIMIT     evaluate at most this many cells at once (sbatch --array=...%LIMIT)
#   AGRAE_REPORT_SBATCH   extra sbatch options for the two small CPU jobs (sweep file, report)
# Relative paths in the experiment file (output_dir) are relative to the directory you submit from, which is every
# job's working directory. Environment activation variables (AGRAE_VENV, ...) are read by the jobs and, when
# verl-agrae is not on PATH here, by this script too (it reads the experiment with verl-agrae).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/ray_cluster.sh
source "$here/lib/ray_cluster.sh"
agrae_require_file_arg "EXPERIMENT.yaml [sbatch options for the training jobs...]" "$@"
experiment=$1
shift

runs=$(agrae_cli compare "$experiment" --num-train) || {
    echo "$0: could not read $experiment (see the error above)" >&2
    exit 1
}
sweep=$(agrae_cli compare "$experiment" --sweep-path)
name=$(basename "${experiment%.*}")

mkdir -p logs
# SLURM runs copies of the batch scripts; this tells them where the library is.
export AGRAE_SLURM_DIR=$here

train_jobs=()
for ((i = 0; i < runs; i++)); do
    mapfile -t args < <(agrae_cli compare "$experiment" --train-args "$i")
    ((${#args[@]} > 0)) || {
        echo "$0: no arguments for training run $i" >&2
        exit 1
    }
    train_jobs+=("$(agrae_sbatch --job-name="$name-train-$i" "$@" "$here/train.sbatch" "${args[@]}")")
done
after_training=$(
    IFS=:
    echo "${train_jobs[*]}"
)

read -r -a small_opts <<<"${AGRAE_REPORT_SBATCH:-}"
read -r -a cell_opts <<<"${AGRAE_EVAL_SBATCH:-}"
# A failed training (or sweep) job makes the later afterok dependencies unsatisfiable: SLURM then cancels those jobs
# (--kill-on-invalid-dep) instead of leaving them pending forever; the report (afterany) still runs and says what
# is missing.
sweep_job=$(agrae_sbatch --job-name="$name-sweep" --dependency="afterok:$after_training" --kill-on-invalid-dep=yes \
    "${small_opts[@]}" "$here/compare_step.sbatch" "$experiment" --write-sweep)
cells=$((runs + 1)) # the base model and every run's final checkpoint, on one benchmark with one sampling setting
array="0-$((cells - 1))${AGRAE_ARRAY_LIMIT:+%$AGRAE_ARRAY_LIMIT}"
eval_job=$(agrae_sbatch --job-name="$name-eval" --array="$array" --dependency="afterok:$sweep_job" \
    --kill-on-invalid-dep=yes "${cell_opts[@]}" \
    "$here/eval_sweep.sbatch" "$sweep")
report_job=$(agrae_sbatch --job-name="$name-report" --dependency="afterany:$eval_job" "${small_opts[@]}" \
    "$here/compare_step.sbatch" "$experiment" --report)
echo "submitted $runs training job(s) ${train_jobs[*]}, the sweep file as job $sweep_job, $cells cell(s) as array" \
    "job $eval_job and the report as job $report_job"
