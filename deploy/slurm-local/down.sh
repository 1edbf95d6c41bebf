#!/usr/bin/env bash
# Stop the local SLURM cluster started by up.sh: every slurmd (one per node), slurmctld, munged,
# and remove the node names up.sh added to /etc/hosts. Idempotent.
# Jobs still queued or running are lost with it; their state files stay in /var/spool/slurm.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"

if [ -z "$(slurmd_pidfiles)" ]; then
    say "no slurmd running"
fi
stop_all_slurmd
if running "$run_dir/slurmctld.pid"; then
    stop_pidfile slurmctld "$run_dir/slurmctld.pid"
else
    say "slurmctld not running"
fi
if running /run/munge/munged.pid; then
    stop_pidfile munged /run/munge/munged.pid
else
    say "munged not running"
fi
if grep -qF "$hosts_marker" /etc/hosts 2>/dev/null; then
    # Rewritten in place: /etc/hosts may be a bind mount that a rename cannot replace.
    kept="$(grep -vF "$hosts_marker" /etc/hosts || true)"
    printf '%s\n' "$kept" >/etc/hosts
fi
say "SLURM stopped"
