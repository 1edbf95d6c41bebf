#!/usr/bin/env bash
# Start a local PostgreSQL for pyrecover's tests (and for trying the controller on PostgreSQL).
#
#   sudo deploy/postgres-local/up.sh
#
# Idempotent: installs postgresql with apt when missing, starts the cluster (Debian's
# pg_ctlcluster), makes it listen on 127.0.0.1:5432, and creates role `pyrecover` (password
# `pyrecover`) and database `pyrecover_test` owned by it when they do not exist. Prints the
# SQLAlchemy URL last, alone on its line, so scripts can capture it with `| tail -n1`.
# Test credentials only: never use this set-up for a real deployment.
set -euo pipefail

role="${PYRECOVER_PG_ROLE:-pyrecover}"
password="${PYRECOVER_PG_PASSWORD:-pyrecover}"
db="${PYRECOVER_PG_DB:-pyrecover_test}"
port=5432
timeout_s="${PG_UP_TIMEOUT:-30}"

say() { echo "[postgres-local] $*" >&2; }
die() { echo "[postgres-local] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts the cluster as user postgres)"

if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    say "installing postgresql with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi

version="$(ls /usr/lib/postgresql | sort -n | tail -n1)"
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
    say "creating cluster $version/main"
    pg_createcluster "$version" main --port="$port" >/dev/null
fi

conf="/etc/postgresql/$version/main/postgresql.conf"
# Listen on loopback TCP (the default 'localhost' may resolve to ::1 only) on the fixed port.
sed -i -E "s/^#?listen_addresses\s*=.*/listen_addresses = '127.0.0.1'/; s/^#?port\s*=.*/port = $port/" "$conf"

status="$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}')"
if [ "$status" != "online" ]; then
    say "starting PostgreSQL $version/main"
    pg_ctlcluster "$version" main start
fi

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qAt -p $port $*"; }

deadline=$((SECONDS + timeout_s))
until psql_admin "-c 'select 1'" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 20 "/var/log/postgresql/postgresql-$version-main.log" >&2 || true
        die "PostgreSQL did not accept connections within ${timeout_s}s"
    fi
    sleep 0.5
done

if [ "$(psql_admin "-c \"select 1 from pg_roles where rolname = '$role'\"")" != "1" ]; then
    say "creating role $role"
    psql_admin "-c \"create role $role login password '$password'\""
else
    psql_admin "-c \"alter role $role login password '$password'\""
fi
if [ "$(psql_admin "-c \"select 1 from pg_database where datname = '$db'\"")" != "1" ]; then
    say "creating database $db"
    psql_admin "-c \"create database $db owner $role\""
fi
# The tests create and drop schemas/tables; the owner may also create further test databases.
psql_admin "-c \"alter role $role createdb\""

url="postgresql+psycopg://$role:$password@127.0.0.1:$port/$db"
PGPASSWORD="$password" psql -qAt -h 127.0.0.1 -p "$port" -U "$role" -d "$db" -c 'select 1' >/dev/null \
    || die "cannot connect as $role over TCP (check pg_hba.conf)"
say "PostgreSQL $version ready on 127.0.0.1:$port"
echo "$url"
