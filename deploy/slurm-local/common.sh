# Shared by up.sh and down.sh (sourced, not run): where the local cluster keeps its files, and how
# its daemons are found and stopped.
# shellcheck shell=bash

run_dir=/run/slurm
log_dir=/var/log/slurm
hosts_marker="# pyrecover slurm-local nodes"

say() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] ERROR: $*" >&2; exit 1; }

# running PIDFILE: the daemon that wrote PIDFILE is alive. Not a zombie (a daemon killed a moment
# ago that init has not reaped yet still answers kill -0), and not an unrelated process that was
# given the same pid later: its command name must be the pid file's daemon (slurmd-vm-1.pid → slurmd).
running() {
    local pid stat name
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ] || return 1
    name="$(basename "$1" .pid)"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${name%%-*}" ]
}

# stop_pidfile NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL; removes the pid file.
stop_pidfile() {
    local name="$1" pidfile="$2" pid
    if running "$pidfile" && pid="$(cat "$pidfile")"; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 100); do
            running "$pidfile" || break
            sleep 0.1
        done
        if running "$pidfile"; then
            say "$name did not stop within 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# slurmd_pidfiles: every slurmd pid file, one per node (slurmd-<node>.pid), plus the single-node
# layout's slurmd.pid that older versions of up.sh wrote.
slurmd_pidfiles() {
    local f
    for f in "$run_dir"/slurmd-*.pid "$run_dir"/slurmd.pid; do
        [ -e "$f" ] && echo "$f"
    done
    return 0
}

# node_of_pidfile PIDFILE: the node name in /run/slurm/slurmd-<node>.pid ("" for slurmd.pid).
node_of_pidfile() {
    local base
    base="$(basename "$1" .pid)"
    case "$base" in
        slurmd-*) echo "${base#slurmd-}" ;;
        *) echo "" ;;
    esac
}

stop_all_slurmd() {
    local f node
    while read -r f; do
        [ -n "$f" ] || continue
        node="$(node_of_pidfile "$f")"
        stop_pidfile "slurmd${node:+ $node}" "$f"
    done < <(slurmd_pidfiles)
}
