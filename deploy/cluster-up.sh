#!/usr/bin/env bash
# make cluster-up: a single-node SLURM cluster and a PostgreSQL-backed MLflow
# server on this machine, everything on 127.0.0.1. Run as root; each daemon runs as
# its own user (lib.sh): the MLflow server as ftsweep-mlflow, slurmctld and slurmdbd
# as slurm, PostgreSQL, MariaDB and munged as theirs, only slurmd as root.
# Idempotent: what already runs is left alone (one an older cluster-up started as
# root is restarted as its user), and every file gets its owner and mode again.
# State, logs and pid files: $FTSWEEP_CLUSTER_STATE (default /var/lib/ftsweep-cluster).
# Stop with deploy/cluster-down.sh.
source "$(dirname "$0")/lib.sh"

[[ "$(id -u)" == 0 ]] || die "run as root (it installs packages, and starts each daemon as its own user)"
[[ -x "$VENV/bin/mlflow" ]] || die "no $VENV/bin/mlflow: run make install first"

# python3-venv: the MLflow server's own venv, where its user cannot run the clients' Python (server.sh)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server postgresql python3-venv)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$LOG/apt.log" 2>&1
    # The packages' own start scripts may start system-wide daemons (where policy-rc.d
    # allows); ours are separate instances on other sockets and ports.
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$LOG/apt.log" 2>&1 \
        || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get install failed"; }
fi

"$DEPLOY/slurm/slurm.sh" up
"$DEPLOY/mlflow/postgres.sh" up
"$DEPLOY/mlflow/server.sh" up

# What clients need; `source` it to use sbatch/sinfo or the server by hand. It holds no secret:
# the MLflow login is a credentials file (root only), to copy to ~/.mlflow/credentials, where
# MLflow's client reads it. Not an environment variable: SLURM keeps each job's environment on disk.
cat >"$STATE/cluster.env" <<ENV
export SLURM_CONF=$SLURM_CONF
export FTSWEEP_CLUSTER_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export FTSWEEP_CLUSTER_PARTITION=$PARTITION
export FTSWEEP_CLUSTER_DATABASE=postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow
export FTSWEEP_CLUSTER_STUDY_STORAGE=postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/optuna
export PGPASSFILE=$STATE/secrets/pgpass
export FTSWEEP_CLUSTER_MLFLOW_CREDENTIALS=$STATE/secrets/mlflow-credentials
ENV
say "cluster up: $(sinfo -h -o '%P %D node(s) %c cpus %T') | MLflow http://127.0.0.1:$MLFLOW_PORT (PostgreSQL :$PG_PORT)"
say "for sbatch / sinfo by hand: source $STATE/cluster.env"
say "the MLflow login, for a client as root (it replaces a credentials file there): install -D -m 600 $STATE/secrets/mlflow-credentials ~/.mlflow/credentials"
