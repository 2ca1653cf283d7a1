#!/usr/bin/env bash
# A throw-away one-node Slurm cluster on this machine, for the Slurm executor's
# tests (and for trying `dml run --executor slurm` without a cluster).
#
#   scripts/slurm-local.sh install      # apt-get install slurm-wlm munge (idempotent)
#   scripts/slurm-local.sh start [DIR]  # conf + state in DIR (default: a new temp dir);
#                                       # prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-local.sh stop DIR     # stops exactly the daemons `start DIR` started
#
# This machine is both controller and compute node; munged, slurmctld and slurmd
# run as root with their own munge socket and key, their own ports, and every
# file under DIR, so a cluster the machine already runs is never touched.
set -euo pipefail

die() {
    echo "slurm-local: $*" >&2
    exit 1
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "install needs root (apt-get install slurm-wlm munge)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    command -v slurmctld >/dev/null || die "slurm-wlm installed but slurmctld is not on PATH"
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Two consecutive free TCP ports (slurmctld, slurmd), away from Slurm's 6817/6818.
pick_ports() {
    local base=$((20000 + $$ % 20000)) p
    for p in $(seq "$base" 2 $((base + 200))); do
        if port_free "$p" && port_free $((p + 1)); then
            echo "$p"
            return 0
        fi
    done
    die "no two free TCP ports in $base..$((base + 200))"
}

start() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || die "$tool not found; run: $0 install"
    done
    [ "$(id -u)" = 0 ] || die "start runs munged, slurmctld and slurmd as root; run it as root"
    local dir=${1:-}
    if [ -z "$dir" ]; then
        dir=$(mktemp -d "${TMPDIR:-/tmp}/dml-slurm.XXXXXX")
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ ! -e "$dir/slurmctld.pid" ] || die "$dir already holds a cluster; stop it first: $0 stop $dir"
    chmod 700 "$dir"
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
    chmod 700 "$dir/munge"

    local host mem port cpus
    host=$(hostname -s)
    cpus=$(nproc)
    # RealMemory a bit below what is free, in MiB.
    mem=$(awk '/MemAvailable/ {m = int($2 / 1024 * 0.8); print (m > 100 ? m : 100)}' /proc/meminfo)
    port=$(pick_ports)

    head -c 1024 /dev/urandom >"$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm-local.sh: a one-node cluster for tests.
ClusterName=dmllocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Start jobs as soon as their dependencies end (the default batches starts every 3 s).
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$dir/slurm.conf
    munged --force \
        --socket="$dir/munge/munge.socket" \
        --key-file="$dir/munge/munge.key" \
        --log-file="$dir/munge/munged.log" \
        --pid-file="$dir/munge/munged.pid" \
        --seed-file="$dir/munge/munged.seed" ||
        die "munged did not start; see $dir/munge/munged.log"
    slurmctld || die "slurmctld did not start; see $dir/slurmctld.log"
    slurmd -N "$host" || die "slurmd did not start; see $dir/slurmd.log"

    local state="" i
    for i in $(seq 1 60); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        case "$state" in
        idle* | mixed* | allocated*) break ;;
        esac
        sleep 0.5
    done
    case "$state" in
    idle* | mixed* | allocated*) ;;
    *)
        stop "$dir" || true
        die "node $host not idle after 30 s (state: ${state:-none}); logs in $dir"
        ;;
    esac
    echo "export SLURM_CONF=$dir/slurm.conf"
}

# Stops one daemon by its pid file, only if the pid is still that daemon.
stop_one() {
    local pidfile=$1 name=$2 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] || return 0
    if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            [ -d "/proc/$pid" ] || break
            sleep 0.2
        done
        if [ -d "/proc/$pid" ]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

stop() {
    local dir=${1:-}
    [ -n "$dir" ] || die "usage: $0 stop DIR (the directory \`start\` used)"
    [ -f "$dir/slurm.conf" ] || die "$dir has no slurm.conf written by $0 start"
    stop_one "$dir/slurmd.pid" slurmd
    stop_one "$dir/slurmctld.pid" slurmctld
    stop_one "$dir/munge/munged.pid" munged
}

case "${1:-}" in
install) install ;;
start) start "${2:-}" ;;
stop) stop "${2:-}" ;;
*) die "usage: $0 install | start [DIR] | stop DIR" ;;
esac
