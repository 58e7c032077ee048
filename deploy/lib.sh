# Shared by the deploy scripts: where state lives, the ports, and how a daemon is
# started and stopped. Sourced, not run.
#
# Every daemon runs in the foreground under `setsid`, so its pid is also its
# process-group id: stopping the group stops its children too (mlflow's workers,
# postgres' backends), and a pid file whose process is no longer a group leader
# of that pid is stale and never signalled. Nothing is stopped that these
# scripts did not start.
#
# Least privilege: each daemon but slurmd runs as a user of its own (postgres,
# mysql, munge, slurm, and $MLFLOW_USER for the MLflow server), with an environment
# of its own (keep_env): nothing of the caller's (a password, an agent socket)
# reaches it. The pid files stay root's, in root's $RUN: a daemon that could
# rewrite its pid file could have cluster-down signal another process group.

set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
STATE="${FTSWEEP_CLUSTER_STATE:-/var/lib/ftsweep-cluster}"
VENV="$(realpath -m "${VENV:-$REPO/.venv}")"  # absolute: the daemons start in /
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
export SLURM_CONF="$STATE/etc/slurm/slurm.conf"  # slurmdbd.conf beside it
MLFLOW_USER=ftsweep-mlflow   # the MLflow server's system user (deploy/mlflow/server.sh makes it)
SLURM_USER=slurm             # slurmctld's and slurmdbd's (the slurm packages make it); slurmd stays root

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

# as_user USER CMD... -> CMD as USER, its primary group and its other groups; root runs it as is
as_user() {
    local user="$1"; shift
    if [[ "$user" == root ]]; then "$@"; else setpriv "--reuid=$user" "--regid=$(id -g "$user")" --init-groups "$@"; fi
}

# keep_env NAME... -> this shell exports NAME... and nothing else (call it in a subshell)
keep_env() {
    local name keep=" $* "
    for name in $(compgen -e); do
        [[ "$keep" == *" $name "* ]] || export -n "$name"
    done
}

# start NAME USER CMD... -> runs CMD as USER in its own session, log in $LOG/NAME.log. CMD's
# environment: PATH, LANG, LC_ALL, TZ, SLURM_CONF and the names in $SERVICE_ENV (set them
# on the call: `SERVICE_ENV="A B" A=1 B=2 start ...`; a function's arguments and its caller's
# variables are in no process's argv).
start() {
    local name="$1" user="$2"; shift 2
    if running "$name"; then say "$name: already running (pid $(cat "$RUN/$name.pid"))"; return 0; fi
    local as=()
    [[ "$user" == root ]] || as=(setpriv "--reuid=$user" "--regid=$(id -g "$user")" --init-groups)
    (
        cd /  # a daemon holds no caller's folder (it may be closed to its user, or removed)
        # shellcheck disable=SC2086  # SERVICE_ENV: names, split on spaces
        keep_env PATH LANG LC_ALL TZ SLURM_CONF ${SERVICE_ENV:-}
        setsid "${as[@]}" "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
        echo $! >"$RUN/$name.pid"
        say "$name: started as $user (pid $!, log $LOG/$name.log)"
    )
}

# runs_as NAME USER -> 0 unless NAME runs as another user (one an older cluster-up started as root)
runs_as() {
    running "$1" || return 0
    [[ "$(ps -o uid= -p "$(cat "$RUN/$1.pid")" | tr -d ' ')" == "$(id -u "$2")" ]]
}

# stop_unless_user NAME USER -> stops NAME if it runs as another user, before its files change owner
# under it; the caller starts it again
stop_unless_user() {
    runs_as "$1" "$2" && return 0
    say "$1: runs as $(ps -o user:32= -p "$(cat "$RUN/$1.pid")" | tr -d ' '), not $2 (an older cluster-up): restarting it"
    stop "$1"
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

# render TEMPLATE -> the template on stdout, @VAR@ replaced by the shell variable VAR
render() {
    local text
    text="$(cat "$1")"
    for var in STATE RUN LOG NODE PARTITION SLURM_USER SLURMCTLD_PORT SLURMD_PORT SLURMDBD_PORT MYSQL_PORT \
               CPUS REAL_MEMORY SLURMDBD_PASSWORD; do
        text="${text//@$var@/${!var:-}}"
    done
    printf '%s\n' "$text"
}

# secret NAME -> a random password, made once and kept in $STATE/secrets (root only)
secret() {
    local file="$STATE/secrets/$1"
    if [[ ! -s "$file" ]]; then
        mkdir -p -m 700 "$STATE/secrets"
        (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' 'xy' >"$file")
    fi
    # the owner and modes on every run: a folder or file made before (by hand, by an older script) keeps none
    chown root:root "$STATE/secrets" "$file"
    chmod 700 "$STATE/secrets"
    chmod 600 "$file"
    cat "$file"
}

# private FILE USER -> stdin into FILE, owned by USER (and its group), mode 0600. Written beside
# FILE and renamed over it: a FILE from before keeps neither its owner nor its mode, and no
# reader ever sees half of it.
private() {
    local tmp
    tmp="$(mktemp "$1.XXXXXX")"  # 0600
    if ! { cat >"$tmp" && chown "$2:" "$tmp" && mv -f "$tmp" "$1"; }; then rm -f "$tmp"; return 1; fi
}

# owned USER MODE FILE... -> each FILE exists, owned by USER (and its group), with MODE: a log a
# daemon opens itself, kept from a run as another user
owned() {
    local user="$1" mode="$2"; shift 2
    touch "$@"
    chown "$user:" "$@"
    chmod "$mode" "$@"
}

mkdir -p "$RUN" "$LOG"
