#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by up.sh (slurmd, slurmctld, munged). Idempotent.
# Jobs still queued or running are lost with it; their state files stay in /var/spool/slurm.
set -euo pipefail

say() { echo "[slurm-local] $*"; }

stop_pidfile() {
    local name="$1" pidfile="$2" pid
    if [ -f "$pidfile" ] && pid="$(cat "$pidfile")" && kill -0 "$pid" 2>/dev/null; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop within 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        say "$name not running"
    fi
    rm -f "$pidfile"
}

stop_pidfile slurmd /run/slurm/slurmd.pid
stop_pidfile slurmctld /run/slurm/slurmctld.pid
munged_pid=/run/munge/munged.pid
stop_pidfile munged "$munged_pid"
say "SLURM stopped"
