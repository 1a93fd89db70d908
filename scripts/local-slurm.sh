#!/usr/bin/env bash
# Bring up (or stop) a single-node Slurm on this machine for testing the online engine's
# HPC path for real: munged, slurmctld and slurmd, all on 127.0.0.1.
#
#   scripts/local-slurm.sh [start] [--partition NAME]   start (idempotent); last stdout line = partition
#   scripts/local-slurm.sh status                        exit 0 and print the partition when it runs
#   scripts/local-slurm.sh stop                          stop exactly the daemons this script started
#
# Needs root and a Debian/Ubuntu system (installs slurm-wlm and munge with apt when missing).
# Configuration goes to /etc/slurm/slurm.conf, state/logs to $WHERETOLEARN_SLURM_STATE
# (default /var/spool/wheretolearn-slurm); the PIDs of the daemons it started go to
# $STATE/daemons.pid so that `stop` never touches a Slurm somebody else runs.
set -euo pipefail

PARTITION=debug
ACTION=start
STATE=${WHERETOLEARN_SLURM_STATE:-/var/spool/wheretolearn-slurm}
PIDS_FILE=$STATE/daemons.pid
CONF=/etc/slurm/slurm.conf
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET=/run/munge/munge.socket.2

die() { echo "local-slurm: error: $*" >&2; exit 1; }
say() { echo "local-slurm: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        start|stop|status) ACTION=$1 ;;
        --partition) [ $# -ge 2 ] || die "--partition needs a name"; PARTITION=$2; shift ;;
        --partition=*) PARTITION=${1#--partition=} ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (use start|stop|status [--partition NAME])" ;;
    esac
    shift
done
[[ $PARTITION =~ ^[A-Za-z0-9_-]+$ ]] || die "partition name '$PARTITION' must match [A-Za-z0-9_-]+"

alive() { [ -n "${1:-}" ] && [ -d "/proc/$1" ]; }

# PID of the daemon named $1 recorded in the state file.
recorded_pid() { [ -f "$PIDS_FILE" ] && awk -v n="$1" '$1 == n {print $2}' "$PIDS_FILE" || true; }

# The partition slurmctld knows by the requested name, else its default partition.
running_partition() {
    local parts
    parts=$(sinfo -h -o '%P' 2>/dev/null) || return 1
    [ -n "$parts" ] || return 1
    if printf '%s\n' "$parts" | sed 's/\*$//' | grep -qx "$PARTITION"; then
        echo "$PARTITION"
    else
        printf '%s\n' "$parts" | grep '\*$' | head -n1 | sed 's/\*$//'
    fi
}

slurm_answers() { command -v sinfo >/dev/null 2>&1 && timeout 10 scontrol ping 2>/dev/null | grep -q UP; }

do_stop() {
    [ -f "$PIDS_FILE" ] || { say "nothing to stop (no daemons started by this script; $PIDS_FILE absent)"; return 0; }
    local name pid
    # Reverse start order: slurmd, slurmctld, munged.
    for name in slurmd slurmctld munged; do
        pid=$(recorded_pid "$name")
        if alive "$pid" && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
            alive "$pid" && kill -9 "$pid"
            say "stopped $name (pid $pid)"
        fi
    done
    rm -f "$PIDS_FILE"
}

do_status() {
    if slurm_answers; then
        running_partition
    else
        say "Slurm is not running"
        return 1
    fi
}

install_packages() {
    local missing=()
    for cmd in munged slurmctld slurmd sinfo sbatch; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 \
        || die "Slurm is not installed (missing: ${missing[*]}) and apt-get is not available to install it"
    say "installing slurm-wlm and munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from trying to start services: we start the daemons ourselves.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
    apt-get update -qq >&2 || { [ $created_policy = 1 ] && rm -f "$policy"; die "apt-get update failed"; }
    apt-get install -y -qq slurm-wlm munge >&2 || { [ $created_policy = 1 ] && rm -f "$policy"; die "apt-get install slurm-wlm munge failed"; }
    [ $created_policy = 1 ] && rm -f "$policy"
    return 0
}

start_munge() {
    if [ -S "$MUNGE_SOCKET" ] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running"
        return 0
    fi
    if [ ! -s "$MUNGE_KEY" ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge "$MUNGE_KEY" 2>/dev/null || true
    chmod 700 /etc/munge; chmod 400 "$MUNGE_KEY"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 755 /run/munge
    rm -f "$MUNGE_SOCKET" /run/munge/munged.pid
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid >&2 \
        || munged --force --pid-file=/run/munge/munged.pid >&2 \
        || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    echo "munged $(cat /run/munge/munged.pid)" >>"$PIDS_FILE"
    munge -n | unmunge >/dev/null || die "munge does not work after starting munged"
}

write_config() {
    local host cpus mem
    host=$(hostname -s 2>/dev/null || hostname)
    [ -n "$host" ] || die "cannot determine the host name (hostname -s)"
    cpus=$(nproc)
    # At least 4 job slots even on a 2-core machine: test jobs are mostly idle Dask workers.
    [ "$cpus" -lt 4 ] && cpus=4
    mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
    cat >"$CONF.tmp" <<EOF
# Written by wheretolearn scripts/local-slurm.sh: a single-node test Slurm.
ClusterName=wheretolearn
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    echo "$host"
}

wait_until_idle() {
    local host=$1 state
    for _ in $(seq 100); do
        state=$(sinfo -h -n "$host" -o '%t' 2>/dev/null | head -n1 || true)
        case "$state" in
            idle*|mix*|alloc*) return 0 ;;
            down*|drain*|drng*|fail*|inval*)
                scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    die "node $host did not become idle (state '${state:-unknown}'); see $STATE/slurmctld.log and $STATE/slurmd.log"
}

do_start() {
    if [ -f "$PIDS_FILE" ] && alive "$(recorded_pid slurmctld)" && alive "$(recorded_pid slurmd)" && slurm_answers; then
        say "already running (started earlier by this script; pids in $PIDS_FILE)"
        running_partition || die "Slurm runs but reports no partition"
        return 0
    fi
    # A Slurm somebody else runs (no state file of ours) is used as it is.
    if [ ! -f "$PIDS_FILE" ] && slurm_answers \
        && [ -n "$(sinfo -h -o '%t' 2>/dev/null | grep -E '^(idle|mix|alloc)' || true)" ]; then
        say "already running (not started by this script; 'stop' will leave it alone)"
        running_partition || die "Slurm runs but reports no partition"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "must run as root to install and start Slurm (running as uid $(id -u))"
    install_packages
    mkdir -p "$STATE"
    # Daemons of an earlier start that are only half alive: stop them before starting afresh.
    [ -f "$PIDS_FILE" ] && do_stop
    : >"$PIDS_FILE"
    start_munge
    local host
    host=$(write_config)
    slurmctld -i -f "$CONF" || die "slurmctld did not start; see $STATE/slurmctld.log"
    for _ in $(seq 50); do [ -s "$STATE/slurmctld.pid" ] && break; sleep 0.1; done
    echo "slurmctld $(cat "$STATE/slurmctld.pid")" >>"$PIDS_FILE"
    slurmd -N "$host" -f "$CONF" || die "slurmd did not start; see $STATE/slurmd.log"
    for _ in $(seq 50); do [ -s "$STATE/slurmd.pid" ] && break; sleep 0.1; done
    echo "slurmd $(cat "$STATE/slurmd.pid")" >>"$PIDS_FILE"
    wait_until_idle "$host"
    say "Slurm is up: node $host (127.0.0.1), partition $PARTITION; pids in $PIDS_FILE"
    echo "$PARTITION"
}

case "$ACTION" in
    start) do_start ;;
    stop) [ "$(id -u)" -eq 0 ] || die "must run as root to stop the daemons"; do_stop ;;
    status) do_status ;;
esac
