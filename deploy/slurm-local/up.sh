#!/usr/bin/env bash
# Start a local SLURM cluster on this machine, idempotently: munged, slurmctld, and one slurmd per
# compute node (Slurm's multiple-slurmd mode: every node is this host, with its own name and port).
#
#   sudo deploy/slurm-local/up.sh              # installs slurm-wlm + munge with apt when missing
#   sudo deploy/slurm-local/up.sh --nodes 3    # nodes <host>-1 .. <host>-3
#
# --nodes N (1-16): how many nodes. Without it: as many as the cluster already configured here has,
# 1 on a fresh machine, so a plain re-run never reshapes a running cluster.
#
# Safe to run again: a cluster that already answers with the same configuration is left running
# (a down/drained node is resumed). A different configuration (another N, a changed template)
# restarts slurmctld and every slurmd; jobs survive that, except jobs on nodes that no longer exist.
# Prints "SLURM ready" once `sinfo` shows every node usable; exits non-zero with the tail of the
# daemon logs when they do not come up within SLURM_UP_TIMEOUT seconds (default 60).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"
conf_dir="${SLURM_CONF_DIR:-/etc/slurm}"
conf="$conf_dir/slurm.conf"
timeout_s="${SLURM_UP_TIMEOUT:-60}"
max_nodes=16
first_port=6818 # Slurm's default SlurmdPort; the nodes take consecutive ports from here

nodes=""
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes)
            [ $# -ge 2 ] || die "--nodes needs a number"
            nodes="$2"
            shift 2
            ;;
        --nodes=*)
            nodes="${1#--nodes=}"
            shift
            ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$1' (usage: up.sh [--nodes N])" ;;
    esac
done
if [ -n "$nodes" ] && ! [[ "$nodes" =~ ^[1-9][0-9]?$ && "$nodes" -le "$max_nodes" ]]; then
    die "--nodes must be a whole number from 1 to $max_nodes, got '$nodes'"
fi

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

mkdir -p "$conf_dir" "$log_dir" "$run_dir" /var/spool/slurm/ctld /run/munge /var/lib/munge \
    /var/log/munge /etc/munge

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

# 3. slurm.conf, from the template, with this machine's CPUs and memory on every node.
host="$(hostname -s)"
if [ -z "$nodes" ]; then
    # The node count of the configuration already here (`scontrol show hostnames` expands a host
    # list locally, without asking slurmctld); 1 when there is none.
    configured="$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$conf" 2>/dev/null | head -n1 || true)"
    nodes=1
    if [ -n "$configured" ]; then
        nodes="$(scontrol show hostnames "$configured" 2>/dev/null | wc -l)"
        [ "$nodes" -ge 1 ] && [ "$nodes" -le "$max_nodes" ] || nodes=1
    fi
fi
names=()
for i in $(seq 1 "$nodes"); do
    names+=("$host-$i")
done
if [ "$nodes" -eq 1 ]; then
    node_list="${names[0]}"
    ports="$first_port"
else
    node_list="$host-[1-$nodes]"
    ports="[$first_port-$((first_port + nodes - 1))]"
fi
cpus="$(nproc)"
# `slurmd -C` measures the host; a node's RealMemory must not exceed what its slurmd sees.
mem="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
mem="${mem:-1000}"
rendered="$(sed -e "s/@HOSTNAME@/${host}/g" -e "s/@NODES@/${node_list}/g" -e "s/@PORTS@/${ports}/g" \
    -e "s/@CPUS@/${cpus}/g" -e "s/@REAL_MEMORY@/${mem}/g" "$here/slurm.conf.template")"
changed=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$rendered" ]; then
    printf '%s\n' "$rendered" >"$conf"
    changed=1
    say "wrote $conf (nodes $node_list, ports $ports, CPUs=$cpus and RealMemory=$mem each)"
fi
if [ ! -f "$conf_dir/cgroup.conf" ]; then
    # Not used with proctrack/linuxproc + task/none, but some slurmd builds look for the file.
    printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' >"$conf_dir/cgroup.conf"
fi

# 4. The node names resolve to this host, as node names do on a real cluster: a job's MASTER_ADDR
# is the first name of its node list. One marked line in /etc/hosts, rewritten in place (in a
# container /etc/hosts is often a bind mount that cannot be replaced by a rename).
hosts_line="127.0.0.1 ${names[*]} $hosts_marker"
hosts_now="$(grep -vF "$hosts_marker" /etc/hosts 2>/dev/null || true)"
if ! grep -qxF "$hosts_line" /etc/hosts 2>/dev/null \
    || [ "$(grep -cF "$hosts_marker" /etc/hosts)" -ne 1 ]; then
    printf '%s\n%s\n' "$hosts_now" "$hosts_line" >/etc/hosts
    say "/etc/hosts: $hosts_line"
fi

# 5. Daemons. Slurm 22.05 cannot add or remove nodes on `scontrol reconfigure`, so a changed
# configuration restarts slurmctld and every slurmd (running jobs survive: their slurmstepd
# processes stay, and slurmctld keeps its state in StateSaveLocation).
if [ "$changed" -eq 1 ] && { running "$run_dir/slurmctld.pid" || [ -n "$(slurmd_pidfiles)" ]; }; then
    say "configuration changed: restarting slurmctld and the slurmd daemons"
    stop_all_slurmd
    stop_pidfile slurmctld "$run_dir/slurmctld.pid"
fi
# A slurmd of a node this configuration does not have (left over from a larger cluster).
while read -r f; do
    [ -n "$f" ] || continue
    node="$(node_of_pidfile "$f")"
    if [[ " ${names[*]} " != *" $node "* ]]; then
        stop_pidfile "slurmd ${node:-(single-node layout)}" "$f"
    fi
done < <(slurmd_pidfiles)
if ! running "$run_dir/slurmctld.pid"; then
    say "starting slurmctld (log $log_dir/slurmctld.log)"
    slurmctld
fi
for node in "${names[@]}"; do
    if ! running "$run_dir/slurmd-$node.pid"; then
        say "starting slurmd for node $node (log $log_dir/slurmd-$node.log)"
        slurmd -N "$node"
    fi
done

# 6. Readiness: every node idle (or mixed/allocated/completing with jobs already there) in `sinfo`.
deadline=$((SECONDS + timeout_s))
resumed=" "
while :; do
    ready=0
    states="$(sinfo -h -N -p debug -o '%N %T' 2>/dev/null || true)"
    for node in "${names[@]}"; do
        state="$(awk -v n="$node" '$1 == n { print $2; exit }' <<<"$states")"
        case "$state" in
            idle | mixed | allocated | completing)
                ready=$((ready + 1))
                ;;
            down* | drain* | drained*)
                if [[ "$resumed" != *" $node "* ]]; then
                    say "node $node is $state: resuming it"
                    scontrol update NodeName="$node" State=RESUME || true
                    resumed+="$node "
                fi
                ;;
        esac
    done
    [ "$ready" -eq "$nodes" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "[slurm-local] ERROR: $ready of $nodes nodes ready after ${timeout_s}s (sinfo: ${states:-none})" >&2
        for log in "$log_dir/slurmctld.log" "$log_dir/slurmd-${names[0]}.log"; do
            echo "--- $log (tail)" >&2
            tail -n 20 "$log" >&2 || true
        done
        exit 1
    fi
    sleep 1
done
say "SLURM ready: $nodes node(s) $node_list, partitions debug (default) and high (preempts debug)," \
    "$(sinfo --version)"
sinfo
