#!/usr/bin/env bash
# shellcheck shell=bash
#
# Small library for verl-agrae SLURM jobs: environment activation, a Ray cluster spanning the job's nodes,
# `verl-agrae doctor`, and cleanup. Source it from a batch script; see docs/slurm.md.
#
# Variables (all optional):
#   AGRAE_VENV               path of a Python virtual environment to activate
#   AGRAE_CONDA_ENV          conda environment to activate (`conda` must be on PATH)
#   AGRAE_MODULES            space-separated environment modules to `module load`
#   AGRAE_APPTAINER_IMAGE    Apptainer/Singularity image; every command runs inside it
#   AGRAE_APPTAINER_ARGS     extra `apptainer exec` arguments (default: --nv); e.g. "--nv --bind /scratch"
#   AGRAE_ENV_FILE           file sourced before anything starts (site exports: NCCL_SOCKET_IFNAME, HF_HOME...)
#   AGRAE_GPUS_PER_NODE      GPUs Ray declares per node (default: SLURM's GPUs per node, else 0)
#   AGRAE_CPUS_PER_NODE      CPUs Ray declares per node (default: SLURM's CPUs per node)
#   AGRAE_NODE_IFACE         network interface whose address each node uses (e.g. ib0; default: see agrae_node_ip)
#   AGRAE_HEAD_IP            head address (default: the head node's address, see agrae_node_ip)
#   AGRAE_RAY_PORT_BASE      first port of this job's block (default: derived from SLURM_JOB_ID)
#   AGRAE_RAY_TMPDIR         parent of Ray's per-job temp dir (default: /tmp; keep it short, Ray uses sockets)
#   AGRAE_RAY_JOIN_TIMEOUT   seconds to wait for every node and GPU to join (default: 600)
#   AGRAE_HEAD_WAIT          seconds to wait for the head alone (default: AGRAE_RAY_JOIN_TIMEOUT)
#   AGRAE_RAY_POLL_INTERVAL  seconds between `ray status` polls (default: 5)
#   AGRAE_RAY_START_ATTEMPTS times a node's `ray start` is tried before the job fails (default: 3)
#   AGRAE_RAY_AUTH           token (default: a fresh per-job token), disabled, or inherit (see agrae_ray_auth)
#   AGRAE_SKIP_DOCTOR        1 to skip `verl-agrae doctor`
#   AGRAE_DOCTOR_ARGS        extra arguments for `verl-agrae doctor`

# Ports: each job owns a block of AGRAE_PORT_STRIDE ports starting at
#   AGRAE_PORT_FIRST + (SLURM_JOB_ID mod AGRAE_PORT_SLOTS) * AGRAE_PORT_STRIDE   (20000 + (id mod 88) * 512)
# (or AGRAE_RAY_PORT_BASE). Fixed services take the first 16 ports, Ray worker processes the other 496.
# Jobs whose ids differ modulo AGRAE_PORT_SLOTS never overlap (in particular any 88 consecutive job ids).
AGRAE_PORT_FIRST=${AGRAE_PORT_FIRST:-20000}
AGRAE_PORT_STRIDE=${AGRAE_PORT_STRIDE:-512}
AGRAE_PORT_SLOTS=${AGRAE_PORT_SLOTS:-88}

AGRAE_WRAP=()          # command prefix (apptainer exec ...), empty for host execution
AGRAE_NODES=()         # hostnames of the job, head first
AGRAE_STEP_PIDS=()     # background `srun ... ray start --block` steps, parallel to AGRAE_NODES
AGRAE_STEP_TRIES=()    # how often each node's step was started
AGRAE_STEP_RES=()      # resource flags of those steps (agrae_step_resources)
AGRAE_NODE_IPS=()      # each node's address, parallel to AGRAE_NODES
AGRAE_WORKERS_STARTED=0
AGRAE_MAIN_PID=""      # the job proper, run in the background so that traps fire at once
AGRAE_CLEANED=0

agrae_log() {
    printf '[agrae %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

agrae_die() {
    agrae_log "ERROR: $*"
    exit 1
}

# Activate the software environment. Must run before any `srun`/`ray start`: steps and raylets inherit the
# batch shell's environment at start time, and variables exported later never reach the workers.
agrae_setup_env() {
    if [[ -n "${AGRAE_ENV_FILE:-}" ]]; then
        [[ -r "$AGRAE_ENV_FILE" ]] || agrae_die "AGRAE_ENV_FILE=$AGRAE_ENV_FILE is not readable"
        # shellcheck source=/dev/null
        source "$AGRAE_ENV_FILE"
    fi
    if [[ -n "${AGRAE_MODULES:-}" ]]; then
        local mod init
        # `module` is a shell function that non-login batch shells may lack: load the usual init scripts.
        for init in /etc/profile.d/modules.sh /etc/profile.d/lmod.sh /usr/share/lmod/lmod/init/bash; do
            type module >/dev/null 2>&1 && break
            # shellcheck source=/dev/null
            [[ -r "$init" ]] && source "$init"
        done
        type module >/dev/null 2>&1 || agrae_die "AGRAE_MODULES is set but the 'module' command is not available"
        for mod in $AGRAE_MODULES; do
            module load "$mod" || agrae_die "module load $mod failed"
        done
    fi
    if [[ -n "${AGRAE_CONDA_ENV:-}" ]]; then
        command -v conda >/dev/null || agrae_die "AGRAE_CONDA_ENV is set but conda is not on PATH"
        eval "$(conda shell.bash hook)" || agrae_die "conda shell hook failed"
        conda activate "$AGRAE_CONDA_ENV" || agrae_die "conda activate $AGRAE_CONDA_ENV failed"
    fi
    if [[ -n "${AGRAE_APPTAINER_IMAGE:-}" ]]; then
        [[ -e "$AGRAE_APPTAINER_IMAGE" ]] || agrae_die "AGRAE_APPTAINER_IMAGE=$AGRAE_APPTAINER_IMAGE not found"
        local runtime=apptainer
        command -v apptainer >/dev/null || runtime=singularity
        command -v "$runtime" >/dev/null || agrae_die "AGRAE_APPTAINER_IMAGE is set but neither apptainer nor singularity is on PATH"
        local -a extra
        read -r -a extra <<<"${AGRAE_APPTAINER_ARGS---nv}"
        AGRAE_WRAP=("$runtime" exec "${extra[@]}" "$AGRAE_APPTAINER_IMAGE")
        if [[ -n "${AGRAE_VENV:-}" ]]; then
            # Apptainer does not pass PATH through; this puts the venv (on a bind mount) first inside.
            export APPTAINERENV_PREPEND_PATH="$AGRAE_VENV/bin"
            export SINGULARITYENV_PREPEND_PATH="$AGRAE_VENV/bin"
        fi
    elif [[ -n "${AGRAE_VENV:-}" ]]; then
        [[ -r "$AGRAE_VENV/bin/activate" ]] || agrae_die "AGRAE_VENV=$AGRAE_VENV has no bin/activate"
        # shellcheck source=/dev/null
        source "$AGRAE_VENV/bin/activate"
    fi
    export PYTHONUNBUFFERED=1
    export RAY_USAGE_STATS_ENABLED=0
    export HYDRA_FULL_ERROR=1
}

# Run a command on this host, inside the container when one is configured.
agrae_run() {
    "${AGRAE_WRAP[@]}" "$@"
}

# For the submit scripts: exit with the usage (status 2) unless there is a first argument, and with status 1 unless
# it names a readable file. Args: the usage text after the script's name, then the script's own arguments.
agrae_require_file_arg() {
    local usage=$1
    shift
    if (($# < 1)); then
        echo "usage: $0 $usage" >&2
        exit 2
    fi
    if [[ ! -r "$1" ]]; then
        echo "$0: file not found: $1" >&2
        exit 1
    fi
}

# `sbatch --parsable ARGS...`, printing the job id alone (--parsable prints "jobid[;cluster]").
agrae_sbatch() {
    local out
    out=$(sbatch --parsable "$@")
    echo "${out%%;*}"
}

# `verl-agrae ARGS...` on the submitting host (login node), for the submit scripts: from PATH, or else in a subshell
# with the environment the jobs activate (agrae_setup_env: venv, conda, modules, container), so a login node needs
# no installation of its own. Its output is the command's; on failure it says why and returns non-zero.
agrae_cli() {
    if command -v verl-agrae >/dev/null; then
        verl-agrae "$@"
        return
    fi
    (
        agrae_setup_env
        if [[ ${#AGRAE_WRAP[@]} -eq 0 ]] && ! command -v verl-agrae >/dev/null; then
            agrae_log "verl-agrae is not on PATH and no job environment provides it (AGRAE_VENV, AGRAE_CONDA_ENV, AGRAE_MODULES, AGRAE_APPTAINER_IMAGE)"
            exit 1
        fi
        agrae_run verl-agrae "$@"
    )
}

# Fill AGRAE_NODES from SLURM_JOB_NODELIST. A real array, one host per element (verl's example did
# nodes_array=("$nodes"): one element holding every name, so it never started a worker).
agrae_nodes() {
    [[ -n "${SLURM_JOB_NODELIST:-}" ]] || agrae_die "SLURM_JOB_NODELIST is not set: run inside a SLURM allocation"
    mapfile -t AGRAE_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    ((${#AGRAE_NODES[@]} > 0)) || agrae_die "scontrol show hostnames '$SLURM_JOB_NODELIST' returned no host"
    export AGRAE_NNODES=${#AGRAE_NODES[@]}
}

# Ray (2.5x) turns on token authentication by itself when ~/.ray/auth_token exists, and every client (`ray
# status`, the driver, other nodes) then needs the token *and* RAY_AUTH_MODE=token, or it is refused. Make the
# choice explicit per job: by default a fresh token, exported before `ray start` so every node, worker and
# client of this job (and no other job) has it. AGRAE_RAY_AUTH=disabled turns authentication off,
# AGRAE_RAY_AUTH=inherit leaves RAY_AUTH_* as you set them.
agrae_ray_auth() {
    case ${AGRAE_RAY_AUTH:-token} in
        token)
            export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
            if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
                RAY_AUTH_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
                export RAY_AUTH_TOKEN
            fi
            ;;
        disabled) export RAY_AUTH_MODE=disabled ;;
        inherit) ;;
        *) agrae_die "AGRAE_RAY_AUTH must be token, disabled or inherit, got '$AGRAE_RAY_AUTH'" ;;
    esac
}

# Derive this job's ports from its id, so Ray clusters of jobs sharing a node never collide.
agrae_ports() {
    local job=${SLURM_JOB_ID:?SLURM_JOB_ID is not set}
    local base=${AGRAE_RAY_PORT_BASE:-$((AGRAE_PORT_FIRST + (job % AGRAE_PORT_SLOTS) * AGRAE_PORT_STRIDE))}
    ((base > 1024 && base + AGRAE_PORT_STRIDE - 1 <= 65535)) || agrae_die "port block $base+$AGRAE_PORT_STRIDE is out of range"
    export AGRAE_RAY_GCS_PORT=$base
    export AGRAE_RAY_NODE_MANAGER_PORT=$((base + 1))
    export AGRAE_RAY_OBJECT_MANAGER_PORT=$((base + 2))
    export AGRAE_RAY_CLIENT_PORT=$((base + 3))
    export AGRAE_RAY_DASHBOARD_PORT=$((base + 4))
    export AGRAE_RAY_AGENT_LISTEN_PORT=$((base + 5))
    export AGRAE_RAY_AGENT_GRPC_PORT=$((base + 6))
    export AGRAE_RAY_METRICS_PORT=$((base + 7))
    export AGRAE_RAY_RUNTIME_ENV_PORT=$((base + 8))
    export AGRAE_RAY_MIN_WORKER_PORT=$((base + 16))
    export AGRAE_RAY_MAX_WORKER_PORT=$((base + AGRAE_PORT_STRIDE - 1))
    export AGRAE_RAY_TEMP_DIR="${AGRAE_RAY_TMPDIR:-/tmp}/ray-$job"
}

# What SLURM gave the job per node: GPUs ("4" or "a100:4"; empty when none) and CPUs (SLURM_CPUS_PER_TASK with
# one task per node, else the first entry of SLURM_JOB_CPUS_PER_NODE, "64(x2)" or "64,32", else SLURM_CPUS_ON_NODE).
agrae_slurm_gpus_per_node() {
    local g=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
    g=${g##*:}
    [[ -z "$g" || "$g" =~ ^[0-9]+$ ]] || agrae_die "cannot read a GPU count from SLURM's '$g'; set AGRAE_GPUS_PER_NODE"
    echo "$g"
}

agrae_slurm_cpus_per_node() {
    local c=${SLURM_CPUS_PER_TASK:-}
    if [[ -z "$c" ]]; then
        c=${SLURM_JOB_CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-}}
        c=${c%%[(,]*}
    fi
    [[ -z "$c" || "$c" =~ ^[0-9]+$ ]] || agrae_die "cannot read a CPU count from SLURM's '$c'; set AGRAE_CPUS_PER_NODE"
    echo "$c"
}

# GPUs and CPUs Ray declares per node: AGRAE_*_PER_NODE, else what SLURM gave (CPU-only test clusters declare
# logical GPUs this way).
agrae_gpus_per_node() {
    local g=${AGRAE_GPUS_PER_NODE:-}
    if [[ -z "$g" ]]; then
        g=$(agrae_slurm_gpus_per_node) || exit 1
    fi
    g=${g:-0}
    [[ "$g" =~ ^[0-9]+$ ]] || agrae_die "AGRAE_GPUS_PER_NODE must be a whole number, got '$g'"
    echo "$g"
}

agrae_cpus_per_node() {
    local c=${AGRAE_CPUS_PER_NODE:-}
    if [[ -z "$c" ]]; then
        c=$(agrae_slurm_cpus_per_node) || exit 1
    fi
    [[ -z "$c" || "$c" =~ ^[0-9]+$ ]] || agrae_die "AGRAE_CPUS_PER_NODE must be a whole number, got '$c'"
    echo "$c"
}

# Resources of the `srun` steps that run Ray on each node: every CPU and GPU the job has there. Since SLURM 22.05 a
# step does not inherit --cpus-per-task from the allocation, and a step without it gets one CPU (with
# TaskPlugin=task/affinity or cgroup, Ray and all its workers would then share one core).
agrae_step_resources() {
    local -n _res=$1
    local c g
    c=$(agrae_slurm_cpus_per_node) || exit 1
    g=$(agrae_slurm_gpus_per_node) || exit 1
    _res=()
    if [[ -n "$c" ]]; then
        _res+=("--cpus-per-task=$c")
    fi
    if [[ -n "$g" && "$g" != 0 ]]; then
        _res+=("--gpus-per-node=$g")
    fi
}

# Flags shared by head and workers: node-local ports, resources, temp dir.
_agrae_ray_node_flags() {
    local -n _flags=$1
    local node_ip=$2
    _flags=(
        "--node-ip-address=$node_ip"
        "--node-manager-port=$AGRAE_RAY_NODE_MANAGER_PORT"
        "--object-manager-port=$AGRAE_RAY_OBJECT_MANAGER_PORT"
        "--dashboard-agent-listen-port=$AGRAE_RAY_AGENT_LISTEN_PORT"
        "--dashboard-agent-grpc-port=$AGRAE_RAY_AGENT_GRPC_PORT"
        "--metrics-export-port=$AGRAE_RAY_METRICS_PORT"
        "--runtime-env-agent-port=$AGRAE_RAY_RUNTIME_ENV_PORT"
        "--min-worker-port=$AGRAE_RAY_MIN_WORKER_PORT"
        "--max-worker-port=$AGRAE_RAY_MAX_WORKER_PORT"
        "--num-gpus=$AGRAE_GPN"
        "--temp-dir=$AGRAE_RAY_TEMP_DIR"
        "--block"
    )
    if [[ -n "$AGRAE_CPN" ]]; then
        _flags+=("--num-cpus=$AGRAE_CPN")
    fi
}

# A node's own address, printed by code that runs on that node (shipped with `declare -f`). With an interface
# name: that interface's IPv4 address. Otherwise the first address of `hostname --ip-address` that is not
# loopback (Debian and Ubuntu map the hostname to 127.0.1.1, which lets Ray workers join but breaks every
# transfer between nodes later), else the first address of any interface (`hostname --all-ip-addresses`, which
# leaves out loopback). Fails when the node has none.
_agrae_local_ip() {
    local iface=${1:-} a
    if [[ -n "$iface" ]]; then
        a=$(ip -o -4 addr show dev "$iface" 2>/dev/null | awk '{ split($4, p, "/"); print p[1]; exit }')
        if [[ -n "$a" ]]; then
            echo "$a"
            return 0
        fi
        echo "interface $iface has no IPv4 address on $(hostname)" >&2
        return 1
    fi
    for a in $(hostname --ip-address 2>/dev/null) $(hostname --all-ip-addresses 2>/dev/null); do
        case $a in
            127.* | ::1 | fe80:* | 0.0.0.0) continue ;;
        esac
        echo "$a"
        return 0
    done
    echo "no address other than loopback on $(hostname): hostname --ip-address gives '$(hostname --ip-address 2>/dev/null)'" >&2
    return 1
}

# Address of a node as seen by the others (AGRAE_NODE_IFACE picks the interface, e.g. InfiniBand).
agrae_node_ip() {
    local node=$1 out
    out=$(srun --overlap --nodes=1 --ntasks=1 -w "$node" bash -c "$(declare -f _agrae_local_ip); _agrae_local_ip \"\$1\"" \
        _agrae_local_ip "${AGRAE_NODE_IFACE:-}") ||
        agrae_die "could not find a usable address of $node (see above); set AGRAE_NODE_IFACE (or AGRAE_HEAD_IP)"
    out=${out%%[[:space:]]*}
    [[ -n "$out" ]] || agrae_die "empty address for $node; set AGRAE_NODE_IFACE (or AGRAE_HEAD_IP)"
    echo "$out"
}

# Start Ray: head on the first node, one worker per other node, then wait until all have joined.
agrae_ray_up() {
    agrae_nodes
    agrae_ports
    agrae_ray_auth
    # Command substitutions run in subshells: a failure there must stop this shell too.
    AGRAE_GPN=$(agrae_gpus_per_node) || exit 1
    AGRAE_CPN=$(agrae_cpus_per_node) || exit 1
    local head=${AGRAE_NODES[0]} head_ip
    local -a step_res
    agrae_step_resources step_res
    head_ip=${AGRAE_HEAD_IP:-$(agrae_node_ip "$head")} || exit 1
    if [[ "$head_ip" == 127.* || "$head_ip" == ::1 ]] && ((${#AGRAE_NODES[@]} > 1)); then
        agrae_die "head address $head_ip is loopback: other nodes cannot reach it; unset AGRAE_HEAD_IP or give a routable one"
    fi
    export AGRAE_HEAD_NODE=$head
    export AGRAE_HEAD_IP=$head_ip
    # The driver (verl's main_ppo, doctor) connects here explicitly: with several clusters on one node
    # "auto" would be ambiguous.
    export RAY_ADDRESS="$head_ip:$AGRAE_RAY_GCS_PORT"
    agrae_log "nodes (${#AGRAE_NODES[@]}): ${AGRAE_NODES[*]}; head $head at $RAY_ADDRESS; ports $AGRAE_RAY_GCS_PORT-$AGRAE_RAY_MAX_WORKER_PORT; Ray: $AGRAE_GPN GPU(s), ${AGRAE_CPN:-all} CPU(s) per node; steps: ${step_res[*]:-no resource flags}"

    AGRAE_STEP_RES=("${step_res[@]}")
    AGRAE_NODE_IPS=("$head_ip")
    AGRAE_STEP_TRIES=(1)
    _agrae_start_ray_step 0
    # Workers need a live GCS to register with.
    agrae_wait_for_ray 1 0 "${AGRAE_HEAD_WAIT:-${AGRAE_RAY_JOIN_TIMEOUT:-600}}"

    local i
    for ((i = 1; i < ${#AGRAE_NODES[@]}; i++)); do
        AGRAE_NODE_IPS[i]=$(agrae_node_ip "${AGRAE_NODES[i]}") || exit 1
        AGRAE_STEP_TRIES[i]=1
        _agrae_start_ray_step "$i"
    done
    AGRAE_WORKERS_STARTED=1
    agrae_wait_for_ray "${#AGRAE_NODES[@]}" $((${#AGRAE_NODES[@]} * AGRAE_GPN)) "${AGRAE_RAY_JOIN_TIMEOUT:-600}"
}

# Start `ray start --block` on node $1 of AGRAE_NODES (0: the head) as a background srun step.
_agrae_start_ray_step() {
    local i=$1
    local -a flags
    _agrae_ray_node_flags flags "${AGRAE_NODE_IPS[i]}"
    if ((i == 0)); then
        srun --overlap --nodes=1 --ntasks=1 "${AGRAE_STEP_RES[@]}" -w "${AGRAE_NODES[0]}" "${AGRAE_WRAP[@]}" \
            ray start --head "--port=$AGRAE_RAY_GCS_PORT" "--ray-client-server-port=$AGRAE_RAY_CLIENT_PORT" \
            "--dashboard-port=$AGRAE_RAY_DASHBOARD_PORT" --dashboard-host=0.0.0.0 "${flags[@]}" &
    else
        srun --overlap --nodes=1 --ntasks=1 "${AGRAE_STEP_RES[@]}" -w "${AGRAE_NODES[i]}" "${AGRAE_WRAP[@]}" \
            ray start "--address=$RAY_ADDRESS" "${flags[@]}" &
    fi
    AGRAE_STEP_PIDS[i]=$!
}

# Parse `ray status`: prints "<nodes> <gpus>" (nodes listed under Active and Idle; total GPUs).
agrae_ray_counts() {
    agrae_run ray status --address "$RAY_ADDRESS" 2>/dev/null | awk '
        /^Active:/ || /^Idle:/ { section = 1; next }
        /^[A-Z]/ { section = 0 }
        section && $1 ~ /^[0-9]+$/ { nodes += $1 }
        $2 == "GPU" && $1 ~ /\// { split($1, a, "/"); gpus = a[2] + 0 }
        END { printf "%d %d\n", nodes, gpus }'
}

# Wait until the cluster has $1 nodes and $2 GPUs, or fail after $3 seconds naming what is missing.
agrae_wait_for_ray() {
    local want_nodes=$1 want_gpus=$2 timeout=$3
    local interval=${AGRAE_RAY_POLL_INTERVAL:-5}
    local start=$SECONDS nodes=0 gpus=0 counts i status
    while :; do
        counts=$(agrae_ray_counts) || counts="0 0"
        read -r nodes gpus <<<"$counts"
        if ((nodes >= want_nodes && gpus >= want_gpus)); then
            agrae_log "ray cluster ready: $nodes node(s), $gpus GPU(s)"
            return 0
        fi
        for i in "${!AGRAE_STEP_PIDS[@]}"; do
            if ! kill -0 "${AGRAE_STEP_PIDS[i]}" 2>/dev/null; then
                status=0
                wait "${AGRAE_STEP_PIDS[i]}" || status=$?
                # Ray's raylet gives up when its dashboard agent takes over 15 s to start, which happens on a busy
                # node (ray-project/ray#65983): start that node again, a bounded number of times. Not the head once
                # workers joined it: they would be left connected to a dead GCS.
                if ((AGRAE_STEP_TRIES[i] < ${AGRAE_RAY_START_ATTEMPTS:-3})) && ((i > 0 || !AGRAE_WORKERS_STARTED)); then
                    AGRAE_STEP_TRIES[i]=$((AGRAE_STEP_TRIES[i] + 1))
                    agrae_log "ray start on ${AGRAE_NODES[i]} exited (status $status); starting it again (attempt ${AGRAE_STEP_TRIES[i]} of ${AGRAE_RAY_START_ATTEMPTS:-3}); see raylet.err under $AGRAE_RAY_TEMP_DIR on that node"
                    _agrae_start_ray_step "$i"
                    continue
                fi
                agrae_die "ray start on ${AGRAE_NODES[i]} exited (status $status) before the cluster was complete (attempt ${AGRAE_STEP_TRIES[i]}); see its log above and $AGRAE_RAY_TEMP_DIR on that node"
            fi
        done
        if ((SECONDS - start >= timeout)); then
            agrae_die "ray cluster incomplete after ${timeout}s: $nodes/$want_nodes node(s), $gpus/$want_gpus GPU(s) joined (nodes: ${AGRAE_NODES[*]}; head $RAY_ADDRESS). Check the workers' logs, firewall on ports $AGRAE_RAY_GCS_PORT-$AGRAE_RAY_MAX_WORKER_PORT, NCCL/GLOO_SOCKET_IFNAME; raise AGRAE_RAY_JOIN_TIMEOUT if nodes are just slow"
        fi
        sleep "$interval"
    done
}

# `verl-agrae doctor` against the running cluster (versions, GPUs, `agrae` registered on every node).
agrae_doctor() {
    if [[ "${AGRAE_SKIP_DOCTOR:-0}" == 1 ]]; then
        agrae_log "skipping verl-agrae doctor (AGRAE_SKIP_DOCTOR=1)"
        return 0
    fi
    local -a extra=()
    read -r -a extra <<<"${AGRAE_DOCTOR_ARGS:-}"
    agrae_log "verl-agrae doctor --address $RAY_ADDRESS ${extra[*]}"
    agrae_run verl-agrae doctor --address "$RAY_ADDRESS" "${extra[@]}" || agrae_die "verl-agrae doctor failed (set AGRAE_SKIP_DOCTOR=1 to bypass)"
}

# Stop this job's Ray processes: signal our own `ray start --block` steps, which take their raylets down.
# Never `ray stop`: it kills every Ray process of the user on the node, including other jobs' clusters.
agrae_cleanup() {
    ((AGRAE_CLEANED)) && return 0
    AGRAE_CLEANED=1
    if [[ -n "$AGRAE_MAIN_PID" ]] && kill -0 "$AGRAE_MAIN_PID" 2>/dev/null; then
        kill -TERM "$AGRAE_MAIN_PID" 2>/dev/null || true
    fi
    local pid alive deadline=$((SECONDS + ${AGRAE_CLEANUP_GRACE:-30}))
    # `|| true`: set -e is active in traps, and a step that already ended makes kill fail.
    for pid in "${AGRAE_STEP_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    while :; do
        alive=0
        for pid in "${AGRAE_STEP_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive && SECONDS < deadline)) || break
        sleep 0.2
    done
    for pid in "${AGRAE_STEP_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if ((${#AGRAE_STEP_PIDS[@]})); then
        agrae_log "ray cluster stopped (${#AGRAE_STEP_PIDS[@]} step(s))"
    fi
    return 0
}

# Cleanup on every way out. SLURM sends TERM on scancel, preemption and time limit.
agrae_install_traps() {
    trap 'agrae_cleanup' EXIT
    trap 'agrae_log "caught SIGTERM (scancel, preemption or time limit)"; exit 143' TERM
    trap 'agrae_log "caught SIGINT"; exit 130' INT
}

# Latest complete checkpoint step of a verl checkpoint directory (0 when none).
agrae_checkpoint_step() {
    local f=$1/latest_checkpointed_iteration.txt step=0
    [[ -r "$f" ]] && step=$(<"$f")
    [[ "$step" =~ ^[0-9]+$ ]] || step=0
    echo "$step"
}

# After SLURM's time-limit warning (--signal=B:USR1@N) stopped the job proper: requeue the job when this attempt
# made progress (Ray is stopped first: `scontrol requeue` makes SLURM send TERM to this shell at once), otherwise
# end it with the reason. A requeue without progress would repeat the same attempt until someone cancels the
# job: SLURM sends the warning again, just as early, in every restart. Args: progress before and after this
# attempt (numbers), what they count, and optionally why. AGRAE_REQUEUE_ON_USR1=0 never requeues.
agrae_requeue_if_progress() {
    local before=$1 after=$2 what=$3 why=${4:+; $4}
    if ((after <= before)); then
        agrae_die "time limit near and this attempt made no progress ($what still $after$why): not requeueing, a requeue would repeat it. Give the job more time (--time) or an earlier warning that leaves room for a step (--signal=B:USR1@SECONDS)"
    fi
    if [[ "${AGRAE_REQUEUE_ON_USR1:-1}" != 1 ]]; then
        agrae_log "$what: $before -> $after in this attempt; AGRAE_REQUEUE_ON_USR1=0: not requeueing (resubmit to continue)"
        exit 0
    fi
    agrae_log "$what: $before -> $after in this attempt; requeueing job $SLURM_JOB_ID, which resumes from there"
    agrae_cleanup
    trap 'exit 0' TERM
    scontrol requeue "$SLURM_JOB_ID" || agrae_die "scontrol requeue $SLURM_JOB_ID failed; resubmit the job to resume"
    exit 0
}

# Run the job proper in the background and wait, so that a signal runs the trap at once instead of
# after the command returns. Returns the command's status.
agrae_run_main() {
    # Not through agrae_run: a backgrounded function is a subshell, and signalling it would orphan the command.
    "${AGRAE_WRAP[@]}" "$@" &
    AGRAE_MAIN_PID=$!
    local rc
    while :; do
        rc=0
        wait "$AGRAE_MAIN_PID" || rc=$?
        # wait returns >128 when a trapped signal interrupted it while the command still runs.
        if ((rc > 128)) && kill -0 "$AGRAE_MAIN_PID" 2>/dev/null; then
            continue
        fi
        break
    done
    AGRAE_MAIN_PID=""
    return "$rc"
}
