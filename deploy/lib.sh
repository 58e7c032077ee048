# Shared by the deploy scripts: where state lives, the ports, and how a daemon is
# started and stopped. Sourced, not run.
#
# Every daemon runs in the foreground under `setsid`, so its pid is also its
# process-group id: stopping the group stops its children too (mlflow's workers,
# postgres' backends), and a pid file whose process is no longer a group leader
# of that pid is stale and never signalled. Nothing is stopped that these
# scripts did not start.

set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
STATE="${FTSWEEP_CLUSTER_STATE:-/var/lib/ftsweep-cluster}"
VENV="${VENV:-$REPO/.venv}"
# 127.0.0.1 only; the ports avoid the usual defaults of a system-wide install
# (postgres 5432, mysql 3306, `make ui` 5000) so both can run side by side.
MLFLOW_PORT="${FTSWEEP_MLFLOW_PORT:-5050}"
PG_PORT="${FTSWEEP_PG_PORT:-5433}"
MYSQL_PORT="${FTSWEEP_MYSQL_PORT:-3307}"
SLURMCTLD_PORT="${FTSWEEP_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${FTSWEEP_SLURMD_PORT:-6818}"
SLURMDBD_PORT="${FTSWEEP_SLURMDBD_PORT:-6819}"
PARTITION="${FTSWEEP_PARTITION:-debug}"
NODE="$(hostname -s)"
export SLURM_CONF="$STATE/etc/slurm.conf"

RUN="$STATE/run"   # pid files and sockets
LOG="$STATE/log"

say() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

# running NAME -> 0 when NAME's pid file names a live process that still leads its group
running() {
    local pid
    pid="$(cat "$RUN/$1.pid" 2>/dev/null)" || return 1
    [[ -n "$pid" && "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]]
}

# start NAME USER CMD... -> runs CMD as USER in its own session, log in $LOG/NAME.log
start() {
    local name="$1" user="$2"; shift 2
    if running "$name"; then say "$name: already running (pid $(cat "$RUN/$name.pid"))"; return 0; fi
    local as=()
    [[ "$user" == root ]] || as=(setpriv "--reuid=$user" "--regid=$user" --init-groups)
    setsid "${as[@]}" "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
    say "$name: started (pid $!, log $LOG/$name.log)"
}

# stop NAME -> TERM the group, KILL it after 30 s; a stale pid file is only removed
stop() {
    local name="$1" pid
    if ! running "$name"; then rm -f "$RUN/$name.pid"; say "$name: not running"; return 0; fi
    pid="$(cat "$RUN/$name.pid")"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
        say "$name: still alive after 30 s, KILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
    say "$name: stopped"
}

# wait_for NAME SECONDS CMD... -> polls CMD until it succeeds; on timeout shows NAME's log
wait_for() {
    local name="$1" deadline=$((SECONDS + $2)); shift 2
    while ((SECONDS < deadline)); do
        timeout 10 "$@" >/dev/null 2>&1 && return 0
        running "$name" || { tail -n 30 "$LOG/$name.log" >&2; die "$name exited during start-up"; }
        sleep 0.25
    done
    tail -n 30 "$LOG/$name.log" >&2
    die "$name not ready in time; tried: $*"
}

# render TEMPLATE OUT -> @VAR@ replaced by the shell variable VAR
render() {
    local text
    text="$(cat "$1")"
    for var in STATE RUN LOG NODE PARTITION SLURMCTLD_PORT SLURMD_PORT SLURMDBD_PORT MYSQL_PORT CPUS REAL_MEMORY \
               SLURMDBD_PASSWORD; do
        text="${text//@$var@/${!var:-}}"
    done
    printf '%s\n' "$text" >"$2"
}

# secret NAME -> a random password, made once and kept in $STATE/secrets (root only)
secret() {
    local file="$STATE/secrets/$1"
    if [[ ! -s "$file" ]]; then
        mkdir -p -m 700 "$STATE/secrets"
        (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' 'xy' >"$file")
    fi
    # the modes on every run: a folder or file made before (by hand, by an older script) keeps none
    chmod 700 "$STATE/secrets"
    chmod 600 "$file"
    cat "$file"
}

mkdir -p "$RUN" "$LOG"
