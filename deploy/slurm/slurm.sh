#!/usr/bin/env bash
# Single-node SLURM on 127.0.0.1: munged -> MariaDB -> slurmdbd -> slurmctld -> slurmd.
#   deploy/slurm/slurm.sh up | down
# Configs are rendered from slurm.conf.in / slurmdbd.conf.in into $STATE/etc/slurm.
# Users: munged as munge, MariaDB as mysql, slurmdbd and slurmctld as $SLURM_USER (slurm),
# slurmd as root (it starts each job as the job's user). Each `up` gives their files their
# owner and mode again: state written by an older cluster-up that ran them as root included.
source "$(dirname "$0")/../lib.sh"

MYSQL_DATA="$STATE/mysql"
MYSQL_SOCKET="$STATE/mysql-run/mysqld.sock"
MYSQL_ROOT=(mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root)

# The files of slurmctld and slurmdbd: theirs, on every run. Before, they ran as root: a slurmctld
# still running so is stopped first, or it would write root's files into its state after the chown.
slurm_files() {
    if ! runs_as slurmctld "$SLURM_USER"; then
        # slurmd checks that the controller's calls come from SlurmUser: one that read the old slurm.conf
        # would refuse the new slurmctld's, so it starts again too
        say "slurm: slurmctld runs as another user than $SLURM_USER (an older cluster-up): slurmd starts again too"
        stop slurmd
        stop_unless_user slurmctld "$SLURM_USER"
    fi
    stop_unless_user slurmdbd "$SLURM_USER"
    # StateSaveLocation: job scripts and environments; only slurmctld (and root) read it
    install -d -o "$SLURM_USER" -g "$SLURM_USER" -m 700 "$STATE/slurm/ctld"
    chown -R "$SLURM_USER:" "$STATE/slurm/ctld"
    install -d -o "$SLURM_USER" -g "$SLURM_USER" -m 755 "$STATE/slurm/run"  # their own pid files
    owned "$SLURM_USER" 640 "$LOG/slurmctld.log" "$LOG/slurmdbd.log"    # they open their logs themselves
    # Where an older cluster-up had them. Its slurmdbd.conf was root's: gone, rather than given to slurm,
    # so that that older cluster-up (which writes it in place, as root's) still works on this state folder.
    rm -f "$RUN/slurmctld.daemon.pid" "$RUN/slurmdbd.daemon.pid" "$STATE/etc/slurm.conf" "$STATE/etc/slurmdbd.conf"
}

up() {
    mkdir -p "$STATE/etc/slurm" "$STATE/slurm/d"
    install -d -o munge -g munge -m 755 "$STATE/munge"
    install -d -o mysql -g mysql -m 755 "$STATE/mysql-run"
    slurm_files
    CPUS="$(nproc)"
    REAL_MEMORY="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    SLURMDBD_PASSWORD="$(secret slurmdbd)"
    render "$DEPLOY/slurm/slurm.conf.in" >"$SLURM_CONF"
    chmod 644 "$SLURM_CONF"  # every daemon and client reads it
    # slurmdbd refuses a slurmdbd.conf not owned by SlurmUser or readable by others (it holds a password)
    render "$DEPLOY/slurm/slurmdbd.conf.in" | private "$STATE/etc/slurm/slurmdbd.conf" "$SLURM_USER"

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

    start slurmdbd "$SLURM_USER" slurmdbd -D
    wait_for slurmdbd 60 sacctmgr -n show cluster
    # The cluster must be known to the accounting database before slurmctld registers.
    if [[ -z "$(sacctmgr -n -P show cluster ftsweep format=cluster)" ]]; then
        sacctmgr -i add cluster ftsweep >/dev/null
    fi

    start slurmctld "$SLURM_USER" slurmctld -D -f "$SLURM_CONF"
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
