#!/usr/bin/env bash
# A real SLURM cluster on this one machine, for tests and CI: munge, slurmctld and N slurmd nodes, each node in
# its own network namespace on a private bridge (10.200.0.0/24 by default, no default route: nothing leaves the
# machine). Needs root. Installs Debian's slurm-wlm, munge, iproute2 and util-linux when a tool is missing.
#
#   scripts/slurm_test_cluster.sh up [N] [STATE_DIR]     start (N=3), wait until every node is idle
#   scripts/slurm_test_cluster.sh down [STATE_DIR]       cancel jobs, stop by recorded PIDs, remove the network
#   scripts/slurm_test_cluster.sh status [STATE_DIR]     daemons and nodes
#   scripts/slurm_test_cluster.sh exec NODE [STATE_DIR] -- CMD...   run CMD inside a node (its network, hostname,
#                                                          /etc/hosts and /tmp)
#
# STATE_DIR (default /run/agrae-slurm) holds slurm.conf, logs, spool, recorded PIDs and env.sh
# (`source STATE_DIR/env.sh` points sbatch/squeue/scontrol at this cluster through SLURM_CONF). It must not be
# under /tmp: every node has a private /tmp, as separate hosts would (Ray keeps per-job files there). Job files
# must live on a path every node sees (anything outside /tmp).
#
# How the nodes are made (measured on Debian 12, SLURM 22.05): `ip netns exec` remounts /sys and slurmd then finds
# no cgroup mount, so each slurmd starts as `setsid nsenter --net=/run/netns/NS unshare --uts --mount -- SCRIPT`,
# where SCRIPT sets the hostname, bind-mounts the node's hosts file over /etc/hosts (so `hostname --ip-address`
# is the node's bridge address) and a private directory over /tmp, then execs slurmd. proctrack/pgid: linuxproc
# leaked background processes on requeue and cgroup does not work in this container.
#
# Variables: AGRAE_SLURM_NET (first three octets, default 10.200.0; must be a private range),
#   AGRAE_SLURM_PREFIX (names of the bridge and namespaces, default agsl), AGRAE_SLURM_CPUS (CPUs per node,
#   default: this machine's), AGRAE_SLURM_CRED_EXPIRE (seconds a requeued job waits before it starts again and
#   the step credential lifetime; default 10, SLURM's default is 120), AGRAE_SLURM_WAIT (seconds to wait for the
#   daemons, default 120), AGRAE_SLURM_SHARED (colon-separated paths under /tmp that every node must still see;
#   this checkout is added when it lies under /tmp, e.g. a CI clone in /tmp/x).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

NET=${AGRAE_SLURM_NET:-10.200.0}
PREFIX=${AGRAE_SLURM_PREFIX:-agsl}
WAIT_S=${AGRAE_SLURM_WAIT:-120}
BRIDGE=${PREFIX}br0

log() { printf '[slurm-test-cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

require_root() {
    ((EUID == 0)) || die "must run as root (network namespaces, munge, slurmd)"
}

# Install what is missing (Debian/Ubuntu). The packages' own post-install steps need no systemd.
ensure_installed() {
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nsenter >/dev/null && command -v unshare >/dev/null && command -v setpriv >/dev/null || missing+=(util-linux)
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
}

# Private (RFC 1918) ranges only: the bridge must never take a routable address.
check_net() {
    [[ "$NET" =~ ^(10\.[0-9]+\.[0-9]+|192\.168\.[0-9]+|172\.(1[6-9]|2[0-9]|3[01])\.[0-9]+)$ ]] ||
        die "AGRAE_SLURM_NET=$NET is not the first three octets of a private (RFC 1918) range"
    if ip -o -4 addr show | awk '{print $4}' | grep -q "^${NET//./\\.}\."; then
        die "an interface already has an address in $NET.0/24 (another cluster up? run '$0 down')"
    fi
    local port
    for port in 6817 6818; do
        [[ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]] || die "TCP port $port is in use here (another slurmctld or slurmd?)"
    done
    local port
    for port in 6817 6818; do
        [[ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]] || die "TCP port $port is in use here (another slurmctld/slurmd?)"
    done
}

node_ip() { echo "$NET.$((10 + $1))"; }

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# The PID recorded in FILE, if that process still runs the expected program (a recycled PID is left alone).
recorded_pid() {
    local file=$1 program=$2 pid argv0
    [[ -r "$file" ]] || return 1
    pid=$(<"$file")
    alive "$pid" || return 1
    # argv[0], not /proc/PID/exe: Debian's /usr/sbin/slurmctld is a link to slurmctld-wlm.
    argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1) || return 1
    [[ "$(basename "$argv0")" == "$program" ]] || return 1
    echo "$pid"
}

# TERM to every PID given, wait up to 15 s for all of them, then KILL what is left.
stop_pids() {
    local pid end=$((SECONDS + 15)) left
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    while :; do
        left=0
        for pid in "$@"; do alive "$pid" && left=1; done
        ((left && SECONDS < end)) || break
        sleep 0.2
    done
    for pid in "$@"; do
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
}

wait_for() {
    local what=$1 timeout=$2
    shift 2
    local end=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < end)) || die "timed out after ${timeout}s waiting for $what"
        sleep 0.5
    done
}

# True once "$@" succeeds; fails the start at once (with the daemon's log) when the daemon has exited.
daemon_ready() {
    local state=$1 name=$2
    shift 2
    if alive "$(cat "$state/pids/$name" 2>/dev/null)"; then
        "$@"
        return
    fi
    tail -n 20 "$state/log/$name.out" >&2 2>/dev/null || true
    die "$name exited during start-up (log: $state/log/$name.out)"
}

write_config() {
    local state=$1 nodes=$2 cpus=$3 i
    local ctl_host
    ctl_host=$(hostname -s)
    cat >"$state/slurm.conf" <<EOF
# Written by scripts/slurm_test_cluster.sh: a test cluster on one machine.
ClusterName=agrae-test
SlurmctldHost=$ctl_host($NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/munge.socket.2,cred_expire=${AGRAE_SLURM_CRED_EXPIRE:-10}
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd-%n.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/pgid
TaskPlugin=task/none
TaskProlog=$state/task_prolog.sh
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerParameters=sched_interval=1
KillWait=10
MinJobAge=3600
InactiveLimit=0
EOF
    for ((i = 1; i <= nodes; i++)); do
        echo "NodeName=n$i NodeAddr=$(node_ip "$i") NodeHostname=n$i CPUs=$cpus RealMemory=2000 State=UNKNOWN" >>"$state/slurm.conf"
    done
    echo "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$state/slurm.conf"

    # Per-node task environment: "NAME=value" lines in nodes/<node>/task.env are exported to every task started
    # there (how a site sets node-specific variables; tests use it to break one node on purpose).
    cat >"$state/task_prolog.sh" <<EOF
#!/usr/bin/env bash
f=$state/nodes/\$(hostname)/task.env
if [[ -r "\$f" ]]; then
    while IFS= read -r line; do
        [[ -n "\$line" ]] && echo "export \$line"
    done <"\$f"
fi
exit 0
EOF
    chmod 755 "$state/task_prolog.sh"
    cat >"$state/env.sh" <<EOF
# source this file: SLURM's commands then talk to the test cluster in $state
export SLURM_CONF=$state/slurm.conf
EOF
}

start_munge() {
    local state=$1
    # munged wants everyone to be able to reach its socket's directory; the key itself is 0400.
    install -d -m 0755 -o munge -g munge "$state/munge"
    # A private key and socket: this cluster neither needs nor touches the machine's own munge set-up.
    head -c 1024 /dev/urandom >"$state/munge/munge.key"
    chown munge:munge "$state/munge/munge.key"
    chmod 0400 "$state/munge/munge.key"
    setpriv --reuid munge --regid munge --init-groups -- /usr/sbin/munged --foreground \
        --socket="$state/munge/munge.socket.2" --key-file="$state/munge/munge.key" \
        --pid-file="$state/munge/munged.pid" --seed-file="$state/munge/munged.seed" \
        --log-file="$state/munge/munged.log" >>"$state/log/munged.out" 2>&1 &
    echo $! >"$state/pids/munged"
    wait_for "munged's socket" "$WAIT_S" daemon_ready "$state" munged test -S "$state/munge/munge.socket.2"
}

start_network() {
    local nodes=$1 i ns ip
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for ((i = 1; i <= nodes; i++)); do
        ns=$PREFIX-n$i
        ip=$(node_ip "$i")
        ip netns add "$ns"
        ip link add "${PREFIX}h$i" type veth peer name "${PREFIX}p$i"
        ip link set "${PREFIX}p$i" netns "$ns"
        ip -n "$ns" link set "${PREFIX}p$i" name eth0
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
        ip link set "${PREFIX}h$i" master "$BRIDGE"
        ip link set "${PREFIX}h$i" up
    done
}

start_nodes() {
    local state=$1 nodes=$2 i j dir p
    local -a shared_paths=()
    IFS=: read -r -a shared_paths <<<"${AGRAE_SLURM_SHARED:-}"
    [[ "$REPO" == /tmp/* ]] && shared_paths+=("$REPO")
    for p in "${shared_paths[@]}"; do
        [[ "$p" == /tmp/* && -d "$p" ]] || die "AGRAE_SLURM_SHARED: '$p' is not a directory under /tmp"
    done
    for ((i = 1; i <= nodes; i++)); do
        dir=$state/nodes/n$i
        mkdir -p "$dir/tmp" "$state/spool/n$i"
        chmod 1777 "$dir/tmp"
        {
            echo "127.0.0.1 localhost"
            echo "$NET.1 $(hostname -s)"
            for ((j = 1; j <= nodes; j++)); do echo "$(node_ip "$j") n$j"; done
        } >"$dir/hosts"
        {
            echo "#!/usr/bin/env bash"
            echo "# Runs in node n$i's network namespace and in fresh UTS and mount namespaces (mounts stay private)."
            echo "set -euo pipefail"
            echo "hostname n$i"
            echo "mount --bind $dir/hosts /etc/hosts"
            # Paths under /tmp that the nodes share (a checkout there): kept visible through the private /tmp.
            local k=0 shared
            for shared in "${shared_paths[@]}"; do
                k=$((k + 1))
                echo "mkdir -p $dir/keep/$k && mount --bind $shared $dir/keep/$k"
            done
            echo "mount --bind $dir/tmp /tmp"
            k=0
            for shared in "${shared_paths[@]}"; do
                k=$((k + 1))
                echo "mkdir -p $shared && mount --bind $dir/keep/$k $shared"
            done
            echo "export SLURM_CONF=$state/slurm.conf"
            echo "exec /usr/sbin/slurmd -D -f $state/slurm.conf -N n$i"
        } >"$dir/start.sh"
        chmod 755 "$dir/start.sh"
        setsid nsenter "--net=/run/netns/$PREFIX-n$i" unshare --uts --mount -- "$dir/start.sh" \
            >>"$state/log/slurmd-n$i.out" 2>&1 &
        echo $! >"$state/pids/slurmd-n$i"
    done
}

ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }

nodes_idle() {
    local want=$1 n
    n=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle" {c++} END {print c + 0}')
    ((n == want))
}

cmd_up() {
    local nodes=${1:-3} state=${2:-/run/agrae-slurm} cpus t0=$SECONDS
    [[ "$nodes" =~ ^[1-9][0-9]?$ && "$nodes" -le 50 ]] || die "node count must be 1-50, got '$nodes'"
    require_root
    ensure_installed
    [[ "$state" != /tmp && "$state" != /tmp/* ]] || die "STATE_DIR must not be under /tmp (nodes have a private /tmp)"
    if [[ -d "$state/pids" ]] && compgen -G "$state/pids/*" >/dev/null; then
        die "$state holds a cluster's PIDs: run '$0 down $state' first"
    fi
    check_net
    cpus=${AGRAE_SLURM_CPUS:-$(nproc)}
    rm -rf "$state"
    mkdir -p "$state"/{ctld,run,log,pids,spool,nodes}
    chmod 755 "$state"
    write_config "$state" "$nodes" "$cpus"
    export SLURM_CONF=$state/slurm.conf
    # From here on, a failure (or an interrupt) takes down whatever was started.
    trap 'log "start failed; tearing down"; cmd_down "$state" || true' EXIT
    start_munge "$state"
    start_network "$nodes"
    /usr/sbin/slurmctld -D -i -f "$SLURM_CONF" >>"$state/log/slurmctld.out" 2>&1 &
    echo $! >"$state/pids/slurmctld"
    wait_for "slurmctld" "$WAIT_S" daemon_ready "$state" slurmctld ctld_up
    start_nodes "$state" "$nodes"
    wait_for "$nodes idle node(s)" "$WAIT_S" nodes_idle "$nodes"
    trap - EXIT
    log "up in $((SECONDS - t0))s: $nodes node(s) n1..n$nodes at $(node_ip 1)..$(node_ip "$nodes"), $cpus CPU(s) each; source $state/env.sh"
}

cmd_down() {
    local state=${1:-/run/agrae-slurm} f pid name ns jobs left
    require_root
    [[ -d "$state" ]] || die "no cluster state in $state"
    export SLURM_CONF=$state/slurm.conf
    if pid=$(recorded_pid "$state/pids/slurmctld" slurmctld); then
        # Jobs first: their processes belong to slurmstepd, which outlives slurmd.
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            log "cancelling job(s): $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086 # one job id per word
            scancel $jobs || true
            local end=$((SECONDS + 60))
            while [[ -n "$(squeue -h -o %A 2>/dev/null)" ]] && ((SECONDS < end)); do sleep 0.5; done
        fi
    fi
    local -a pids=()
    for f in "$state"/pids/slurmd-*; do
        [[ -e "$f" ]] || continue
        if pid=$(recorded_pid "$f" slurmd); then pids+=("$pid"); fi
    done
    stop_pids "${pids[@]}"
    rm -f "$state"/pids/slurmd-*
    # Anything still in a node's network namespace was started by that node (a job's process that escaped).
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-n[0-9]*$" || true); do
        left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        if [[ -n "${left// /}" ]]; then
            log "killing processes left in $ns: $left"
            # shellcheck disable=SC2086 # one pid per word
            kill -KILL $left 2>/dev/null || true
        fi
        ip netns del "$ns"
    done
    for name in slurmctld munged; do
        if pid=$(recorded_pid "$state/pids/$name" "$name"); then stop_pids "$pid"; fi
        rm -f "$state/pids/$name"
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
    log "down (logs kept in $state/log)"
}

cmd_status() {
    local state=${1:-/run/agrae-slurm} f pid
    export SLURM_CONF=$state/slurm.conf
    for f in "$state"/pids/*; do
        [[ -e "$f" ]] || continue
        pid=$(<"$f")
        if alive "$pid"; then echo "$(basename "$f") pid $pid running"; else echo "$(basename "$f") pid $pid gone"; fi
    done
    sinfo -N -o '%N %t %c' 2>/dev/null || echo "slurmctld not answering"
}

# Run a command in a node's namespaces (those of its slurmd: network, hostname, mounts).
cmd_exec() {
    local node=$1 state=/run/agrae-slurm pid
    shift
    if [[ "${1:-}" != -- ]]; then
        state=$1
        shift
    fi
    [[ "${1:-}" == -- ]] || usage
    shift
    require_root
    pid=$(recorded_pid "$state/pids/slurmd-$node" slurmd) || die "node $node is not running"
    exec nsenter -t "$pid" --net --uts --mount -- "$@"
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    status) shift; cmd_status "$@" ;;
    exec) shift; (($# >= 2)) || usage; cmd_exec "$@" ;;
    *) usage ;;
esac
