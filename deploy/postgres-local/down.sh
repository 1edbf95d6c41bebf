#!/usr/bin/env bash
# Stop the local PostgreSQL started by up.sh. Idempotent; the data (role, database) stays.
set -euo pipefail
say() { echo "[postgres-local] $*"; }
if ! command -v pg_lsclusters >/dev/null; then
    say "PostgreSQL is not installed"
    exit 0
fi
pg_lsclusters -h | while read -r version cluster _port status _rest; do
    if [ "$status" = "online" ]; then
        say "stopping PostgreSQL $version/$cluster"
        pg_ctlcluster "$version" "$cluster" stop
    else
        say "PostgreSQL $version/$cluster not running"
    fi
done
