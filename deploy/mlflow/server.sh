#!/usr/bin/env bash
# The MLflow tracking server: PostgreSQL backend, artifacts proxied from a folder,
# http://127.0.0.1:$FTSWEEP_MLFLOW_PORT, behind MLflow's basic authentication (--app-name
# basic-auth): every request but /health needs a user. The admin user `admin` gets a generated
# password, kept in $STATE/secrets/mlflow-admin (root only, 0600) beside PostgreSQL's; clients
# pass it as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD ($STATE/cluster.env sets both).
# Users and permissions live in PostgreSQL's database mlflow_auth.
#   deploy/mlflow/server.sh up | down | restart
# On a real site: --host 0.0.0.0 (behind your firewall / auth proxy), --workers 4,
# and an --artifacts-destination every client can reach through the server
# (a shared folder, s3://..., gs://...); clients then need no access to it.
source "$(dirname "$0")/../lib.sh"

URL="http://127.0.0.1:$MLFLOW_PORT"

up() {
    "$VENV/bin/python" -c "import psycopg2" 2>/dev/null \
        || die "psycopg2 missing in $VENV: run make install (it is in the dev extras)"
    "$VENV/bin/python" -c "import flask_wtf" 2>/dev/null \
        || die "Flask-WTF (MLflow's basic-auth app needs it) missing in $VENV: run make install (dev extras)"
    mkdir -p "$STATE/mlflow-artifacts" "$STATE/etc"
    # The passwords come from a pgpass file and the environment (root's only), so they never show in `ps`.
    local pgpass="$STATE/secrets/pgpass" pg_password db
    pg_password="$(secret postgres-mlflow)"
    (umask 077; for db in mlflow mlflow_auth optuna; do
        printf '127.0.0.1:%s:%s:mlflow:%s\n' "$PG_PORT" "$db" "$pg_password"
    done >"$pgpass")
    # Read at the first start only, to create the admin user; later starts keep the users as they are.
    cat >"$STATE/etc/mlflow-auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    # The job-execution feature (huey workers) is not used; it would start more processes.
    PGPASSFILE="$pgpass" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_AUTH_CONFIG_PATH="$STATE/etc/mlflow-auth.ini" \
        MLFLOW_AUTH_ADMIN_PASSWORD="$(secret mlflow-admin)" MLFLOW_FLASK_SERVER_SECRET_KEY="$(secret mlflow-flask-key)" \
        start mlflow root "$VENV/bin/mlflow" server --app-name basic-auth \
        --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
        --artifacts-destination "$STATE/mlflow-artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
    # The first start creates MLflow's schema in PostgreSQL (~30 s); later ones take seconds.
    wait_for mlflow 180 "$VENV/bin/python" -c \
        "import urllib.request; urllib.request.urlopen('$URL/health', timeout=2)"
    # The admin password in secrets/ must be the server's: an auth database kept from an earlier
    # state folder keeps its own. The password goes in the environment, never in argv.
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(secret mlflow-admin)" MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 \
        "$VENV/bin/python" -c "import mlflow; mlflow.MlflowClient('$URL').search_experiments(max_results=1)" \
        >/dev/null 2>&1 || die "the MLflow server refuses the admin password in $STATE/secrets/mlflow-admin: its \
auth database (PostgreSQL mlflow_auth) holds another; drop that database and run cluster-up again"
    say "mlflow: $URL (basic auth: user admin, password in $STATE/secrets/mlflow-admin)"
}

case "${1:-}" in
    up) up ;;
    down) stop mlflow ;;
    restart) stop mlflow; up ;;
    *) echo "usage: $0 up|down|restart" >&2; exit 2 ;;
esac
