#!/usr/bin/env bash
# The MLflow tracking server: PostgreSQL backend, artifacts proxied from a folder,
# http://127.0.0.1:$FTSWEEP_MLFLOW_PORT, behind MLflow's basic authentication (--app-name
# basic-auth): every request but /health needs a user. The admin user `admin` gets a generated
# password, kept in $STATE/secrets/mlflow-admin (root only, 0600) beside PostgreSQL's, and in
# MLflow's credentials-file format in $STATE/secrets/mlflow-credentials: a client copies that to
# ~/.mlflow/credentials (0600), so the password is in no environment (SLURM keeps each job's on disk).
# Users and permissions live in PostgreSQL's database mlflow_auth.
#
# The server runs as the system user $MLFLOW_USER (made here if missing), not root: it owns the
# artifacts folder, its log and $STATE/mlflow-server (0700: its auth config and its own pgpass,
# 0600). Its environment holds only what it needs: the PostgreSQL password comes from that pgpass,
# the admin password and the auth app's key from its environment (readable by that user and root).
#   deploy/mlflow/server.sh up | down | restart
# On a real site: a user of its own, --host 127.0.0.1 behind an HTTPS reverse proxy (0.0.0.0, with
# --allowed-hosts, only where TLS and a firewall stand in front), --workers 4, and an
# --artifacts-destination every client can reach through the server (a shared folder, s3://...,
# gs://...); clients then need no access to it.
source "$(dirname "$0")/../lib.sh"

URL="http://127.0.0.1:$MLFLOW_PORT"
HOME_DIR="$STATE/mlflow-server"   # the server's own folder (and its HOME)
# The server's Python environment: the clients' ($VENV) unless FTSWEEP_MLFLOW_VENV names another.
# Its user must be able to run its interpreter: a venv made from a Python in a private home
# (pyenv's under /root, 0700) is not, whatever the venv folder's own modes.
SERVER_VENV="$(realpath -m "${FTSWEEP_MLFLOW_VENV:-$VENV}")"
SERVER_PYTHON="$SERVER_VENV/bin/python"
# Made by server_venv when the clients' venv is out of the server user's reach and none is named.
OWN_VENV="${FTSWEEP_MLFLOW_OWN_VENV:-/opt/ftsweep-mlflow-venv}"

runnable_by_server() {  # as the server starts it: its user runs the interpreter, which runs itself again (uvicorn)
    (cd / && as_user "$MLFLOW_USER" "$1" -c "import subprocess, sys
subprocess.run([sys.executable, '-c', 'import mlflow.server, psycopg2, flask_wtf'], check=True)") >/dev/null 2>&1
}

# The clients' venv is usually built from a Python in root's home (pyenv's, /root 0700), which the
# server's user cannot run. Then, unless FTSWEEP_MLFLOW_VENV names one, the server gets a venv of
# its own from the system's Python, with the clients' MLflow version (made once, ~1 min).
server_venv() {
    runnable_by_server "$SERVER_PYTHON" && return
    [[ -z "${FTSWEEP_MLFLOW_VENV:-}" ]] || die "the user $MLFLOW_USER, which runs the MLflow server, cannot run \
$SERVER_PYTHON with mlflow, psycopg2 and flask_wtf: every folder above it must be open to that user"
    if ! runnable_by_server "$OWN_VENV/bin/python"; then
        local pins
        pins="$("$VENV/bin/python" -m pip freeze 2>/dev/null | grep -iE '^(mlflow|mlflow-skinny|mlflow-tracing|psycopg2-binary|flask-wtf)==')" \
            || die "cannot read MLflow's version from $VENV: run make install"
        say "mlflow: $MLFLOW_USER cannot run $(readlink -f "$SERVER_PYTHON"); making its own venv in $OWN_VENV"
        rm -rf "$OWN_VENV"
        /usr/bin/python3 -m venv "$OWN_VENV" >>"$LOG/mlflow-venv.log" 2>&1 \
            && "$OWN_VENV/bin/python" -m pip install -q $pins >>"$LOG/mlflow-venv.log" 2>&1 \
            || { tail -n 20 "$LOG/mlflow-venv.log" >&2; die "could not make the MLflow server's venv in $OWN_VENV"; }
        chmod -R a+rX "$OWN_VENV"
        runnable_by_server "$OWN_VENV/bin/python" || die "$MLFLOW_USER cannot run $OWN_VENV/bin/python either"
    fi
    SERVER_VENV="$OWN_VENV"
    SERVER_PYTHON="$OWN_VENV/bin/python"
}

# The server's user, its folders and files: theirs on every run. An older cluster-up ran the
# server as root: one still running so is stopped first, or it would write root's files after the chown.
server_files() {
    if ! id -u "$MLFLOW_USER" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$MLFLOW_USER"
        say "mlflow: made the system user $MLFLOW_USER"
    fi
    stop_unless_user mlflow "$MLFLOW_USER"
    install -d -o "$MLFLOW_USER" -g "$MLFLOW_USER" -m 700 "$HOME_DIR"
    install -d -o "$MLFLOW_USER" -g "$MLFLOW_USER" -m 750 "$STATE/mlflow-artifacts"
    chown -R "$MLFLOW_USER:" "$STATE/mlflow-artifacts"
    owned "$MLFLOW_USER" 640 "$LOG/mlflow.log"
    rm -f "$STATE/etc/mlflow-auth.ini"  # where an older cluster-up had the auth config
}

up() {
    "$SERVER_PYTHON" -c "import psycopg2" 2>/dev/null \
        || die "psycopg2 missing in $SERVER_VENV: run make install (it is in the dev extras)"
    "$SERVER_PYTHON" -c "import flask_wtf" 2>/dev/null \
        || die "Flask-WTF (MLflow's basic-auth app needs it) missing in $SERVER_VENV: run make install (dev extras)"
    server_files
    server_venv
    # The PostgreSQL password in libpq's pgpass format: the server's copy, and root's for clients
    # (Optuna's study storage, psql). printf is a builtin: the password is in no argv.
    local pg_password pgpass db
    pg_password="$(secret postgres-mlflow)"
    pgpass="$(for db in mlflow mlflow_auth optuna; do
        printf '127.0.0.1:%s:%s:mlflow:%s\n' "$PG_PORT" "$db" "$pg_password"
    done)"
    printf '%s\n' "$pgpass" | private "$HOME_DIR/pgpass" "$MLFLOW_USER"
    printf '%s\n' "$pgpass" | private "$STATE/secrets/pgpass" root
    # Read at the first start only, to create the admin user; later starts keep the users as they are.
    private "$HOME_DIR/auth.ini" "$MLFLOW_USER" <<INI
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    printf '[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = %s\n' "$(secret mlflow-admin)" \
        | private "$STATE/secrets/mlflow-credentials" root
    # Its environment: these names and nothing else of this shell's (start, in lib.sh). The
    # job-execution feature (huey workers) is not used; it would start more processes.
    SERVICE_ENV="HOME PGPASSFILE MLFLOW_AUTH_CONFIG_PATH MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY"
    SERVICE_ENV+=" MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
    HOME="$HOME_DIR" PGPASSFILE="$HOME_DIR/pgpass" MLFLOW_AUTH_CONFIG_PATH="$HOME_DIR/auth.ini" \
        MLFLOW_AUTH_ADMIN_PASSWORD="$(secret mlflow-admin)" MLFLOW_FLASK_SERVER_SECRET_KEY="$(secret mlflow-flask-key)" \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
        start mlflow "$MLFLOW_USER" "$SERVER_PYTHON" -m mlflow server --app-name basic-auth \
        --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
        --artifacts-destination "$STATE/mlflow-artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
    # The first start creates MLflow's schema in PostgreSQL (~30 s); later ones take seconds.
    wait_for mlflow 180 "$VENV/bin/python" -c \
        "import urllib.request; urllib.request.urlopen('$URL/health', timeout=2)"
    # The admin password in secrets/ must be the server's: an auth database kept from an earlier
    # state folder keeps its own. The password goes in this one check's environment, never in argv.
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(secret mlflow-admin)" MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 \
        "$VENV/bin/python" -c "import mlflow; mlflow.MlflowClient('$URL').search_experiments(max_results=1)" \
        >/dev/null 2>&1 || die "the MLflow server refuses the admin password in $STATE/secrets/mlflow-admin: its \
auth database (PostgreSQL mlflow_auth) holds another; drop that database and run cluster-up again"
    say "mlflow: $URL as user $MLFLOW_USER (basic auth: user admin; login in $STATE/secrets/mlflow-credentials)"
}

case "${1:-}" in
    up) up ;;
    down) stop mlflow ;;
    restart) stop mlflow; up ;;
    *) echo "usage: $0 up|down|restart" >&2; exit 2 ;;
esac
