#!/usr/bin/env bash
# Single-node SLURM on 127.0.0.1: munged -> MariaDB -> slurmdbd -> slurmctld -> slurmd.
#   deploy/slurm/slurm.sh up | down
# Configs are rendered from slurm.conf.in / slurmdbd.conf.in into $STATE/etc.
source "$(dirname "$0")/../lib.sh"

MYSQL_DATA="$STATE/mysql"
MYSQL_SOCKET="$STATE/mysql-run/mysqld.sock"
MYSQL_ROOT=(mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root)

up() {
    mkdir -p "$STATE/etc" "$STATE/slurm/ctld" "$STATE/slurm/d"
    install -d -o munge -g munge -m 755 "$STATE/munge"
    install -d -o mysql -g mysql -m 755 "$STATE/mysql-run"
    CPUS="$(nproc)"
    REAL_MEMORY="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    SLURMDBD_PASSWORD="$(secret slurmdbd)"
    render "$DEPLOY/slurm/slurm.conf.in" "$STATE/etc/slurm.conf"
    (umask 077; render "$DEPLOY/slurm/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf")

    # munge: a private daemon on its own socket, the key the package generated.
    start munged munge munged --foreground --socket="$STATE/munge/munge.socket.2" \
        --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" --log-file="$LOG/munged.daemon.log"
    wait_for munged 20 munge --socket="$STATE/munge/munge.socket.2" -n

    # MariaDB for slurmdbd: datadir made once, TCP on 127.0.0.1 only.
    if [[ ! -d "$MYSQL_DATA/mysql" ]]; then
        install -d -o mysql -g mysql -m 750 "$MYSQL_DATA"
        mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DATA" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1
    fi
    start mariadb mysql mariadbd --no-defaults --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCKET" \
        --bind-address=127.0.0.1 --port="$MYSQL_PORT" --pid-file="$STATE/mysql-run/mariadbd.pid" \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --max-connections=50
    wait_for mariadb 60 "${MYSQL_ROOT[@]}" -e "SELECT 1"
    "${MYSQL_ROOT[@]}" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$SLURMDBD_PASSWORD';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$SLURMDBD_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

    start slurmdbd root slurmdbd -D
    wait_for slurmdbd 60 sacctmgr -n show cluster
    # The cluster must be known to the accounting database before slurmctld registers.
    if [[ -z "$(sacctmgr -n -P show cluster ftsweep format=cluster)" ]]; then
        sacctmgr -i add cluster ftsweep >/dev/null
    fi

    start slurmctld root slurmctld -D -f "$SLURM_CONF"
    wait_for slurmctld 60 scontrol ping
    start slurmd root slurmd -D -f "$SLURM_CONF"
    # A node that was down (e.g. after an unclean stop) returns by itself (ReturnToService=2).
    wait_for slurmd 60 bash -c "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"
}

down() {
    if running slurmctld; then
        # Jobs first: their steps run under slurmstepd, which outlives slurmd.
        local jobs
        jobs="$(squeue -h -o %i 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            say "slurm: cancelling jobs $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs || true
            for _ in $(seq 120); do [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.5; done
        fi
    fi
    stop slurmd
    stop slurmctld
    stop slurmdbd
    stop mariadb
    stop munged
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
