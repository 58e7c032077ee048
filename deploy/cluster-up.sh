#!/usr/bin/env bash
# make cluster-up: a single-node SLURM cluster and a PostgreSQL-backed MLflow
# server on this machine, as root, everything on 127.0.0.1. Idempotent: what
# already runs is left alone. State, logs and pid files: $FTSWEEP_CLUSTER_STATE
# (default /var/lib/ftsweep-cluster). Stop with deploy/cluster-down.sh.
source "$(dirname "$0")/lib.sh"

[[ "$(id -u)" == 0 ]] || die "run as root (the daemons run as root, munge, mysql and postgres)"
[[ -x "$VENV/bin/mlflow" ]] || die "no $VENV/bin/mlflow: run make install first"

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server postgresql)
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

# What clients need; `source` it to use sbatch/sinfo or the server by hand. It names the
# secrets' files and holds none: sourcing it reads the MLflow password (root only).
cat >"$STATE/cluster.env" <<ENV
export SLURM_CONF=$SLURM_CONF
export FTSWEEP_CLUSTER_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export FTSWEEP_CLUSTER_PARTITION=$PARTITION
export FTSWEEP_CLUSTER_DATABASE=postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow
export FTSWEEP_CLUSTER_STUDY_STORAGE=postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/optuna
export PGPASSFILE=$STATE/secrets/pgpass
export MLFLOW_TRACKING_USERNAME=admin
export FTSWEEP_CLUSTER_MLFLOW_PASSWORD_FILE=$STATE/secrets/mlflow-admin
export MLFLOW_TRACKING_PASSWORD="\$(cat "\$FTSWEEP_CLUSTER_MLFLOW_PASSWORD_FILE")"
ENV
say "cluster up: $(sinfo -h -o '%P %D node(s) %c cpus %T') | MLflow http://127.0.0.1:$MLFLOW_PORT (PostgreSQL :$PG_PORT)"
say "for sbatch / sinfo by hand: source $STATE/cluster.env"
