#!/usr/bin/env bash
# The MLflow tracking server: PostgreSQL backend, artifacts proxied from a folder,
# http://127.0.0.1:$FTSWEEP_MLFLOW_PORT.
#   deploy/mlflow/server.sh up | down | restart
# On a real site: --host 0.0.0.0 (behind your firewall / auth proxy), --workers 4,
# and an --artifacts-destination every client can reach through the server
# (a shared folder, s3://..., gs://...); clients then need no access to it.
source "$(dirname "$0")/../lib.sh"

URL="http://127.0.0.1:$MLFLOW_PORT"

up() {
    "$VENV/bin/python" -c "import psycopg2" 2>/dev/null \
        || die "psycopg2 missing in $VENV: run make install (it is in the dev extras)"
    mkdir -p "$STATE/mlflow-artifacts"
    # The password comes from a pgpass file, so it never shows in `ps`.
    local pgpass="$STATE/secrets/pgpass"
    (umask 077; printf '127.0.0.1:%s:%s:mlflow:%s\n' "$PG_PORT" mlflow "$(secret postgres-mlflow)" \
        "$PG_PORT" optuna "$(secret postgres-mlflow)" >"$pgpass")
    # The job-execution feature (huey workers) is not used; it would start more processes.
    PGPASSFILE="$pgpass" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start mlflow root "$VENV/bin/mlflow" server \
        --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
        --artifacts-destination "$STATE/mlflow-artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
    # The first start creates MLflow's schema in PostgreSQL (~30 s); later ones take seconds.
    wait_for mlflow 180 "$VENV/bin/python" -c \
        "import urllib.request; urllib.request.urlopen('$URL/health', timeout=2)"
    say "mlflow: $URL"
}

case "${1:-}" in
    up) up ;;
    down) stop mlflow ;;
    restart) stop mlflow; up ;;
    *) echo "usage: $0 up|down|restart" >&2; exit 2 ;;
esac
