#!/usr/bin/env bash
# make cluster-down: stops what cluster-up started (by pid file), in reverse order;
# keeps the data (PostgreSQL, MariaDB, artifacts) for the next cluster-up.
# Remove $FTSWEEP_CLUSTER_STATE to start from nothing.
source "$(dirname "$0")/lib.sh"

"$DEPLOY/mlflow/server.sh" down
"$DEPLOY/mlflow/postgres.sh" down
"$DEPLOY/slurm/slurm.sh" down
rm -f "$STATE/cluster.env"
