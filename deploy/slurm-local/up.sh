#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (munge + slurmctld + slurmd), idempotently.
#
#   sudo deploy/slurm-local/up.sh          # installs slurm-wlm + munge with apt when missing
#
# Safe to run again: a cluster that already answers is left running (a down/drained node is
# resumed). Prints "SLURM ready" once `sinfo` shows the node idle; exits non-zero with the tail of
# the daemon logs when it does not come up within SLURM_UP_TIMEOUT seconds (default 60).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
conf_dir="${SLURM_CONF_DIR:-/etc/slurm}"
timeout_s="${SLURM_UP_TIMEOUT:-60}"
log_dir=/var/log/slurm

say() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] ERROR: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (it installs packages and starts munged, slurmctld and slurmd)"
fi

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
    say "installing slurm-wlm and munge with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$conf_dir" "$log_dir" /run/slurm /var/spool/slurm/ctld /var/spool/slurm/d /run/munge \
    /var/lib/munge /var/log/munge /etc/munge

# 2. Munge: a key, then the daemon (as root, hence --force).
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    munged --force
    for _ in $(seq 1 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n </dev/null | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf, from the template, with this machine's CPUs and memory.
node="$(hostname -s)"
cpus="$(nproc)"
# `slurmd -C` measures the node; its RealMemory must not exceed what slurmd sees, or the node drains.
mem="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
mem="${mem:-1000}"
rendered="$(sed -e "s/@HOSTNAME@/${node}/g" -e "s/@CPUS@/${cpus}/g" -e "s/@REAL_MEMORY@/${mem}/g" \
    "$here/slurm.conf.template")"
conf="$conf_dir/slurm.conf"
changed=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$rendered" ]; then
    printf '%s\n' "$rendered" >"$conf"
    changed=1
    say "wrote $conf (node $node, CPUs=$cpus, RealMemory=$mem)"
fi
if [ ! -f "$conf_dir/cgroup.conf" ]; then
    # Not used with proctrack/linuxproc + task/none, but some slurmd builds look for the file.
    printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' >"$conf_dir/cgroup.conf"
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 4. Daemons. A running cluster is reconfigured when the config changed, otherwise left alone.
if running /run/slurm/slurmctld.pid; then
    if [ "$changed" -eq 1 ]; then
        say "config changed: scontrol reconfigure"
        scontrol reconfigure || true
    fi
else
    say "starting slurmctld (log $log_dir/slurmctld.log)"
    slurmctld
fi
if ! running /run/slurm/slurmd.pid; then
    say "starting slurmd (log $log_dir/slurmd.log)"
    slurmd
fi

# 5. Readiness: the node must be idle (or mixed/allocated by jobs already there) in `sinfo`.
deadline=$((SECONDS + timeout_s))
resumed=0
while :; do
    state="$(sinfo -h -n "$node" -o '%T' 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle | mixed | allocated | completing)
            break
            ;;
        down* | drain* | drained*)
            if [ "$resumed" -eq 0 ]; then
                say "node $node is $state: resuming it"
                scontrol update NodeName="$node" State=RESUME || true
                resumed=1
            fi
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "[slurm-local] ERROR: node $node not ready after ${timeout_s}s (sinfo state: '${state:-none}')" >&2
        echo "--- $log_dir/slurmctld.log (tail)" >&2
        tail -n 20 "$log_dir/slurmctld.log" >&2 || true
        echo "--- $log_dir/slurmd.log (tail)" >&2
        tail -n 20 "$log_dir/slurmd.log" >&2 || true
        exit 1
    fi
    sleep 1
done
say "SLURM ready: node $node ($state), partition debug, $(sinfo --version)"
sinfo
