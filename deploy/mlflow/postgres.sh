#!/usr/bin/env bash
# PostgreSQL 15 for the MLflow server: a private cluster in $STATE/postgres on
# 127.0.0.1:$FTSWEEP_PG_PORT, role `mlflow` (password in $STATE/secrets) owning the databases
# `mlflow` (the tracking server's), `mlflow_auth` (its users and permissions) and `optuna`
# (search studies: hydra.sweeper.storage). The password goes to psql on stdin, never in argv.
#   deploy/mlflow/postgres.sh up | down
# FTSWEEP_PG_BIN: the PostgreSQL binaries to use (default: the newest installed).
# On a real site point --backend-store-uri at the database your admins give you.
source "$(dirname "$0")/../lib.sh"

PG_BIN="${FTSWEEP_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}"
PG_DATA="$STATE/postgres/data"
PG_SOCKETS="$STATE/postgres/run"
AS_POSTGRES=(setpriv --reuid=postgres --regid=postgres --init-groups)
psql_admin() { "${AS_POSTGRES[@]}" "$PG_BIN/psql" -h "$PG_SOCKETS" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

up() {
    install -d -o postgres -g postgres -m 755 "$STATE/postgres" "$PG_SOCKETS"
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        # local socket: peer (only the OS user postgres); TCP: passwords.
        "${AS_POSTGRES[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            >"$LOG/postgres-initdb.log" 2>&1
    fi
    start postgres postgres "$PG_BIN/postgres" -D "$PG_DATA" -c listen_addresses=127.0.0.1 -c port="$PG_PORT" \
        -c unix_socket_directories="$PG_SOCKETS" -c max_connections=100
    wait_for postgres 60 "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
    local password
    password="$(secret postgres-mlflow)"
    if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'")" ]]; then
        psql_admin -c "CREATE ROLE mlflow LOGIN"
    fi
    # printf is a shell builtin: the password reaches psql through a pipe, so `ps` never shows it.
    printf "ALTER ROLE mlflow PASSWORD '%s'\n" "$password" | psql_admin
    local db  # one database each: MLflow, its auth app and Optuna all keep an alembic_version table
    for db in mlflow mlflow_auth optuna; do
        if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
            psql_admin -c "CREATE DATABASE $db OWNER mlflow"
        fi
    done
}

case "${1:-}" in
    up) up ;;
    down) stop postgres ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
