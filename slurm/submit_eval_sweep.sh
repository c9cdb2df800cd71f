#!/usr/bin/env bash
# Submit a whole evaluation sweep: one array task per cell, then a report job that waits for all of them.
#
#   slurm/submit_eval_sweep.sh examples/sweeps/pass_at_256.yaml [extra sbatch options for the cells...]
#
# Variables:
#   AGRAE_EVAL_CELLS    number of cells (default: `verl-agrae eval sweep SWEEP --num-cells`, run with verl-agrae
#                       from PATH or else in the environment the jobs use: AGRAE_VENV, AGRAE_CONDA_ENV, ...)
#   AGRAE_ARRAY_LIMIT   run at most this many cells at once (sbatch --array=...%LIMIT)
#   AGRAE_REPORT_SBATCH extra sbatch options for the report job (space-separated; it asks for 2 CPUs and 1 hour)
# Environment activation variables (AGRAE_VENV, ...) are read by the jobs; export them before submitting
# (sbatch passes the submitting environment on by default). verl-agrae need not be installed on this host.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/ray_cluster.sh
source "$here/lib/ray_cluster.sh"
agrae_require_file_arg "SWEEP.yaml [sbatch options for the cell jobs...]" "$@"
sweep=$1
shift

cells=${AGRAE_EVAL_CELLS:-}
if [[ -z "$cells" ]]; then
    cells=$(agrae_cli eval sweep "$sweep" --num-cells) || {
        echo "$0: could not count the cells of $sweep (set AGRAE_EVAL_CELLS)" >&2
        exit 1
    }
fi
if ! [[ "$cells" =~ ^[0-9]+$ ]] || ((cells == 0)); then
    echo "$0: invalid number of cells '$cells'" >&2
    exit 1
fi

mkdir -p logs
# SLURM runs copies of the batch scripts; this tells them where the library is.
export AGRAE_SLURM_DIR=$here
array="0-$((cells - 1))${AGRAE_ARRAY_LIMIT:+%$AGRAE_ARRAY_LIMIT}"
array_job=$(agrae_sbatch --array="$array" "$@" "$here/eval_sweep.sbatch" "$sweep")
read -r -a report_opts <<<"${AGRAE_REPORT_SBATCH:-}"
report_job=$(agrae_sbatch --dependency="afterany:$array_job" "${report_opts[@]}" "$here/eval_report.sbatch" "$sweep")
echo "submitted $cells cell(s) as array job $array_job and the report as job $report_job (after all cells)"
