#!/usr/bin/env bash
# A real single-node SLURM cluster for the test suite (Debian's SLURM 22.05).
#
#   tests/cluster/slurm-cluster.sh up       start it (idempotent; seconds once set up)
#   tests/cluster/slurm-cluster.sh down     stop the daemons this script started
#   tests/cluster/slurm-cluster.sh status   what runs, sinfo; exit 0 only when up
#   tests/cluster/slurm-cluster.sh env      the export lines for clients (eval "$(... env)")
#   tests/cluster/slurm-cluster.sh purge    down, then delete the state directory
#
# What `up` starts, each daemon with a pid file under $SIMOBS_SLURM_DIR/run:
#   munged     our own, on a socket in the state directory, with its own key
#   mariadbd   a private data directory, listening on 127.0.0.1 only
#   slurmdbd   accounting, so that sacct works and the executor plugin needs no tweaks
#   slurmctld  cluster "simobs":  partitions cpu (default) and gpu, one dummy GPU (gres)
#   slurmd     the node, this host
#   slurmctld  cluster "simobs-nogpu": the same node and partitions but no GPU gres and
#              no slurmd; it exists so that a test can check that a GPU job is refused
#              at submission (`sbatch` validates the gres request in slurmctld, so no
#              node is needed for that).  Select it with SLURM_CONF=$(... env nogpu).
#
# Nothing is written outside the state directory: the configuration lies in
# $SIMOBS_SLURM_DIR/etc/slurm.conf and clients (sbatch, squeue, sacct, snakemake's
# executor plugin, which calls them) find it through SLURM_CONF.  A real site's
# /etc/slurm and munged are never touched; the ports are not SLURM's defaults.
#
# Environment:
#   SIMOBS_SLURM_DIR        state directory (default /tmp/simobs-slurm)
#   SIMOBS_SLURM_PORT_BASE  first of the ports used (default 16810): +7 slurmctld,
#                           +8 slurmd, +9 slurmdbd, +17 slurmctld of simobs-nogpu,
#                           +0 MariaDB
#   SIMOBS_SLURM_ACCOUNTING 1 (default) or 0: without accounting no MariaDB/slurmdbd;
#                           clients then need `slurm-status-command: squeue`.
#
# Must run as root (slurmd starts jobs as their owner).  The Debian packages come from
# .ci/install-cluster.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${SIMOBS_SLURM_DIR:-/tmp/simobs-slurm}"
BASE="${SIMOBS_SLURM_PORT_BASE:-16810}"
ACCOUNTING="${SIMOBS_SLURM_ACCOUNTING:-1}"
MYSQL_PORT=$((BASE + 0))
CTLD_PORT=$((BASE + 7))
SLURMD_PORT=$((BASE + 8))
DBD_PORT=$((BASE + 9))
NOGPU_CTLD_PORT=$((BASE + 17))
CLUSTER=simobs
NOGPU=simobs-nogpu
# Account that the test profile submits under (created in slurmdbd for user root).
TEST_ACCOUNT=simobs
MYSQL_PASS=simobs-test-only
# Every client command below talks to the main cluster unless it says otherwise.
export SLURM_CONF="$STATE/etc/slurm.conf"

log() { printf 'slurm-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- pids
pidfile() { echo "$STATE/run/$1.pid"; }

# alive NAME: true when the pid file names a live process running the expected program
# (guards against a stale pid file whose pid was reused by something else).
alive() {
    local name=$1 f pid comm
    f=$(pidfile "$name")
    [[ -s $f ]] || return 1
    pid=$(tr -dc '0-9' < "$f")
    [[ -n $pid && -d /proc/$pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    case $name in
        munged) [[ $comm == munged ]] ;;
        mariadbd) [[ $comm == mariadbd || $comm == mysqld ]] ;;
        slurmdbd) [[ $comm == slurmdbd ]] ;;
        slurmd) [[ $comm == slurmd ]] ;;
        *-slurmctld) [[ $comm == slurmctld ]] ;;
        *) return 1 ;;
    esac
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.1 s.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local i
    for ((i = 0; i < secs * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

# stop NAME...: SIGTERM to those of ours that run, then wait for all of them together
# (SLURM daemons take 2-6 s each to shut down); SIGKILL after 15 s.
stop() {
    local name pid i
    local -A pids=()
    for name in "$@"; do
        if alive "$name"; then
            pid=$(tr -dc '0-9' < "$(pidfile "$name")")
            pids[$name]=$pid
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for ((i = 0; i < 150; i++)); do
        local left=0
        for name in "${!pids[@]}"; do
            [[ -d /proc/${pids[$name]} ]] && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    for name in "${!pids[@]}"; do
        pid=${pids[$name]}
        if [[ -d /proc/$pid ]]; then
            log "$name ($pid) ignored SIGTERM for 15 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name ($pid)"
    done
    for name in "$@"; do
        rm -f "$(pidfile "$name")"
    done
}

# ---------------------------------------------------------------------------- config
render() {  # render TEMPLATE OUT KEY=VALUE...
    local tmpl=$1 out=$2
    shift 2
    local args=() kv
    for kv in "$@"; do
        args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${args[@]}" "$tmpl" > "$out.tmp"
    mv "$out.tmp" "$out"
}

write_configs() {
    mkdir -p "$STATE"/{etc,etc-nogpu,run,log,spool,dev}
    chmod 755 "$STATE"
    local host node cpus boards sockets cores threads mem
    host=$(hostname -s)
    # `slurmd -C` prints this machine's node line; configure a little less memory than
    # it reports, because a node that reports less than its configured RealMemory is
    # drained ("Low RealMemory").
    node=$(slurmd -C | head -1)
    get() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$node"; }
    cpus=$(get CPUs)
    boards=$(get Boards)
    sockets=$(get SocketsPerBoard)
    cores=$(get CoresPerSocket)
    threads=$(get ThreadsPerCore)
    mem=$(get RealMemory)
    mem=$((mem * 95 / 100))
    local acct_main acct_nogpu
    if [[ $ACCOUNTING == 1 ]]; then
        # AccountingStoragePass names the munge socket for connections to slurmdbd:
        # sacct, sacctmgr and slurmctld ignore AuthInfo's socket for those.
        acct_main="# AccountingStoragePass: munge socket for connections to slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$STATE/munge/munge.socket
AccountingStorageTRES=gres/gpu"
    else
        acct_main="AccountingStorageType=accounting_storage/none"
    fi
    acct_nogpu=${acct_main//gres\/gpu/cpu}
    # The dummy GPU: slurmd 22.05 drops a GRES given only a Count (and drains the node),
    # but accepts one whose File is any character device.  Jobs then get
    # CUDA_VISIBLE_DEVICES=0 with no GPU behind it; code must ask the framework.
    if [[ ! -c $STATE/dev/nvidia0 ]]; then
        rm -f "$STATE/dev/nvidia0"
        mknod "$STATE/dev/nvidia0" c 240 0
    fi
    printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s\n' "$host" "$STATE/dev/nvidia0" \
        > "$STATE/etc/gres.conf"
    : > "$STATE/etc/plugstack.conf"
    : > "$STATE/etc-nogpu/plugstack.conf"
    local common=(STATE="$STATE" HOST="$host" CPUS="$cpus" BOARDS="$boards"
        SOCKETS="$sockets" CORES="$cores" THREADS="$threads" MEM="$mem")
    render "$HERE/slurm.conf.in" "$STATE/etc/slurm.conf" "${common[@]}" \
        CLUSTER=$CLUSTER ETC="$STATE/etc" CTLD_PORT=$CTLD_PORT SLURMD_PORT=$SLURMD_PORT \
        GRES_TYPES="GresTypes=gpu" NODE_GRES="Gres=gpu:1" ACCOUNTING="${acct_main//$'\n'/\\n}"
    # The no-GPU cluster shares the node name and slurmd port + 100 where nothing listens:
    # its node never comes up, which does not matter for a refused submission.
    render "$HERE/slurm.conf.in" "$STATE/etc-nogpu/slurm.conf" "${common[@]}" \
        CLUSTER=$NOGPU ETC="$STATE/etc-nogpu" CTLD_PORT=$NOGPU_CTLD_PORT SLURMD_PORT=$((SLURMD_PORT + 100)) \
        GRES_TYPES="# no GresTypes: this cluster has no GPUs" NODE_GRES="" \
        ACCOUNTING="${acct_nogpu//$'\n'/\\n}"
    if [[ $ACCOUNTING == 1 ]]; then
        render "$HERE/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf" STATE="$STATE" \
            DBD_PORT=$DBD_PORT MYSQL_PORT=$MYSQL_PORT MYSQL_PASS=$MYSQL_PASS
        # slurmdbd refuses a config readable by others (it holds the DB password).
        chmod 600 "$STATE/etc/slurmdbd.conf"
    fi
}

# The job step of Snakemake's SLURM plugin (snakemake-executor-plugin-slurm-jobstep
# 0.6) starts its inner `srun` with every SLURM_* variable removed, SLURM_CONF
# included, so inside a job srun finds its configuration only where libslurm looks
# without it: /etc/slurm/slurm.conf, then /run/slurm/conf/slurm.conf (the cache of a
# "configless" slurmd).  We link the latter to our etc directory: nothing under /etc is
# written, and `down` removes the link again.  A real /etc/slurm/slurm.conf would take
# precedence, so `up` refuses to run beside one.
DEFAULT_CONF_LINK=/run/slurm/conf

link_default_conf() {
    if [[ -e /etc/slurm/slurm.conf ]]; then
        die "/etc/slurm/slurm.conf exists (a real SLURM site?): job steps of the Snakemake
plugin would read it instead of this cluster's config (the plugin drops SLURM_CONF in
jobs). Run the test cluster on a machine without a SLURM site configuration."
    fi
    if [[ -L $DEFAULT_CONF_LINK ]]; then
        local target
        target=$(readlink "$DEFAULT_CONF_LINK")
        [[ $target == "$STATE/etc" ]] && return 0
        # Dangling (its state directory was deleted), or left by a cluster of ours with
        # another state directory (its slurm.conf carries our header): replace it.
        # Anything else is not ours.
        [[ ! -e $target ]] \
            || head -1 "$target/slurm.conf" 2>/dev/null | grep -q '^# Generated by tests/cluster/slurm-cluster.sh' \
            || die "$DEFAULT_CONF_LINK links to $target, not made by this script; remove it or stop that cluster"
        rm -f "$DEFAULT_CONF_LINK"
    elif [[ -e $DEFAULT_CONF_LINK ]]; then
        die "$DEFAULT_CONF_LINK exists (a configless slurmd?); stop it before starting the test cluster"
    fi
    mkdir -p "$(dirname "$DEFAULT_CONF_LINK")"
    ln -s "$STATE/etc" "$DEFAULT_CONF_LINK"
}

unlink_default_conf() {
    if [[ -L $DEFAULT_CONF_LINK && $(readlink "$DEFAULT_CONF_LINK") == "$STATE/etc" ]]; then
        rm -f "$DEFAULT_CONF_LINK"
    fi
}

# ---------------------------------------------------------------------------- daemons
start_munge() {
    alive munged && return 0
    local d=$STATE/munge
    mkdir -p "$d"
    if [[ ! -s $d/munge.key ]]; then
        # A key of our own: the cluster must not depend on (or reveal) the host's key.
        dd if=/dev/urandom of="$d/munge.key" bs=1024 count=1 status=none
    fi
    # munged insists on owning its key and directories and refuses lax permissions.
    chown -R munge:munge "$d"
    chmod 755 "$d"
    chmod 400 "$d/munge.key"
    rm -f "$d/munge.socket" "$d/munge.socket.lock"
    touch "$(pidfile munged)"
    chown munge:munge "$(pidfile munged)"
    runuser -u munge -- munged --key-file="$d/munge.key" --socket="$d/munge.socket" \
        --pid-file="$(pidfile munged)" --log-file="$d/munged.log" \
        --seed-file="$d/munge.seed" --num-threads=2 \
        || die "munged did not start; see $STATE/munge/munged.log"
    wait_for 5 munged bash -c "munge -n -S '$d/munge.socket' | unmunge -S '$d/munge.socket'" \
        || die "munged does not answer on $d/munge.socket; see $STATE/munge/munged.log"
    log "started munged"
}

mysql_cli() { mariadb --no-defaults --protocol=socket -S "$STATE/mysql/mysqld.sock" -uroot "$@"; }

start_mariadb() {
    alive mariadbd && return 0
    local d=$STATE/mysql
    mkdir -p "$d"
    if [[ ! -d $d/data/mysql ]]; then
        log "initialising the private MariaDB data directory (once)"
        mariadb-install-db --no-defaults --datadir="$d/data" --user=root \
            --auth-root-authentication-method=socket --skip-test-db \
            > "$STATE/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed; see $STATE/log/mariadb-install.log"
    fi
    # Small buffers, no binary log, no fsync per commit: a test database.  Its own
    # session (setsid), so it outlives the shell that started it, like the SLURM daemons.
    setsid mariadbd --no-defaults --user=root --datadir="$d/data" --socket="$d/mysqld.sock" \
        --bind-address=127.0.0.1 --port="$MYSQL_PORT" --pid-file="$(pidfile mariadbd)" \
        --log-error="$STATE/log/mariadb.log" --skip-log-bin --innodb-buffer-pool-size=64M \
        --innodb-log-file-size=16M --innodb-flush-log-at-trx-commit=0 \
        --innodb-lock-wait-timeout=900 --max-connections=50 >/dev/null 2>&1 &
    disown
    wait_for 30 mariadb mysql_cli -e 'select 1' \
        || die "MariaDB did not come up on 127.0.0.1:$MYSQL_PORT; see $STATE/log/mariadb.log"
    mysql_cli -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$MYSQL_PASS';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$MYSQL_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    log "started mariadbd on 127.0.0.1:$MYSQL_PORT"
}

start_slurmdbd() {
    alive slurmdbd && return 0
    SLURM_CONF="$STATE/etc/slurm.conf" slurmdbd \
        || die "slurmdbd did not start; see $STATE/log/slurmdbd.log"
    # The first start creates the tables (a few seconds).
    wait_for 60 slurmdbd env SLURM_CONF="$STATE/etc/slurm.conf" sacctmgr -n list cluster \
        || die "slurmdbd does not answer on port $DBD_PORT; see $STATE/log/slurmdbd.log"
    log "started slurmdbd on 127.0.0.1:$DBD_PORT"
}

# The clusters and the test account: user root may submit under "root" (created with
# each cluster) and "$TEST_ACCOUNT" (what tests/cluster/profile/site.yaml names, so a
# test can see a site's account reach sacct).
ensure_accounts() {
    local c have
    have=$(sacctmgr -n -P list cluster format=cluster)
    for c in $CLUSTER $NOGPU; do
        grep -qx "$c" <<<"$have" || sacctmgr -i add cluster "$c" >/dev/null
    done
    if ! sacctmgr -n -P list assoc user=root account="$TEST_ACCOUNT" format=cluster \
        | grep -qx "$CLUSTER"; then
        sacctmgr -i add account "$TEST_ACCOUNT" cluster=$CLUSTER,$NOGPU \
            description="simobs tests" organization=simobs >/dev/null || true
        sacctmgr -i add user root account="$TEST_ACCOUNT" cluster=$CLUSTER,$NOGPU >/dev/null
    fi
}

start_slurmctld() {  # start_slurmctld CLUSTER CONF
    local c=$1 conf=$2
    alive "$c-slurmctld" && return 0
    mkdir -p "$STATE/spool/$c-ctld"
    # -i: ignore state files written under an older config (a test cluster keeps nothing
    # worth recovering, and a stale job list would only confuse the tests).
    SLURM_CONF=$conf slurmctld -i \
        || die "slurmctld ($c) did not start; see $STATE/log/$c-slurmctld.log"
    wait_for 20 "$c" env SLURM_CONF="$conf" scontrol ping \
        || die "slurmctld ($c) does not answer; see $STATE/log/$c-slurmctld.log"
    log "started slurmctld for cluster $c"
}

start_slurmd() {
    alive slurmd && return 0
    mkdir -p "$STATE/spool/slurmd"
    SLURM_CONF="$STATE/etc/slurm.conf" slurmd \
        || die "slurmd did not start; see $STATE/log/slurmd.log"
    log "started slurmd"
}

node_ready() {
    local state
    state=$(SLURM_CONF="$STATE/etc/slurm.conf" sinfo -h -N -o '%T' 2>/dev/null | head -1)
    [[ $state == idle || $state == mixed || $state == allocated ]]
}

# ---------------------------------------------------------------------------- commands
require_tools() {
    local t
    for t in slurmctld slurmd sbatch munged; do
        command -v "$t" >/dev/null || die "$t not found; install the packages with .ci/install-cluster.sh"
    done
    if [[ $ACCOUNTING == 1 ]]; then
        for t in slurmdbd mariadbd mariadb-install-db; do
            command -v "$t" >/dev/null \
                || die "$t not found; install with .ci/install-cluster.sh or set SIMOBS_SLURM_ACCOUNTING=0"
        done
    fi
    [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd starts jobs as their owner)"
}

is_up() {
    alive munged && alive "$CLUSTER-slurmctld" && alive slurmd && alive "$NOGPU-slurmctld" \
        && { [[ $ACCOUNTING != 1 ]] || { alive mariadbd && alive slurmdbd; }; } \
        && node_ready
}

cmd_up() {
    require_tools
    if is_up && [[ -L $DEFAULT_CONF_LINK ]]; then
        log "already up (SLURM_CONF=$STATE/etc/slurm.conf)"
        return 0
    fi
    local t0=$SECONDS
    # Rewrite the configuration only while no SLURM daemon runs on the old one.
    if ! alive "$CLUSTER-slurmctld" && ! alive slurmd && ! alive "$NOGPU-slurmctld"; then
        write_configs
    fi
    link_default_conf
    start_munge
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
        ensure_accounts
    fi
    start_slurmctld "$CLUSTER" "$STATE/etc/slurm.conf"
    start_slurmctld "$NOGPU" "$STATE/etc-nogpu/slurm.conf"
    start_slurmd
    if ! wait_for 30 node node_ready; then
        # A node left down or drained by an earlier run: return it to service once.
        SLURM_CONF="$STATE/etc/slurm.conf" scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        wait_for 15 node node_ready || {
            SLURM_CONF="$STATE/etc/slurm.conf" sinfo -N -l >&2 || true
            die "node not idle; see $STATE/log/slurmd.log and $STATE/log/$CLUSTER-slurmctld.log"
        }
    fi
    cmd_env > "$STATE/env.sh"
    log "up in $((SECONDS - t0)) s; export SLURM_CONF=$STATE/etc/slurm.conf (or: source $STATE/env.sh)"
}

cmd_down() {
    # Cancel what is left so that no job step outlives its slurmd.
    if alive "$CLUSTER-slurmctld"; then
        SLURM_CONF="$STATE/etc/slurm.conf" scancel --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    # SLURM daemons first (they report to slurmdbd and need munge on the way out).
    stop slurmd "$NOGPU-slurmctld" "$CLUSTER-slurmctld"
    stop slurmdbd
    stop mariadbd munged
    unlink_default_conf
    log "down"
}

cmd_status() {
    local d rc=0 s
    for d in munged mariadbd slurmdbd "$CLUSTER-slurmctld" "$NOGPU-slurmctld" slurmd; do
        if alive "$d"; then s="running (pid $(tr -dc '0-9' < "$(pidfile "$d")"))"; else s="stopped"; fi
        printf '%-22s %s\n' "$d" "$s"
    done
    if is_up; then
        echo "cluster: up; export SLURM_CONF=$STATE/etc/slurm.conf"
        SLURM_CONF="$STATE/etc/slurm.conf" sinfo
    else
        echo "cluster: down"
        rc=1
    fi
    return $rc
}

cmd_env() {
    case ${1:-} in
        "" | gpu) echo "export SLURM_CONF=$STATE/etc/slurm.conf" ;;
        nogpu) echo "export SLURM_CONF=$STATE/etc-nogpu/slurm.conf" ;;
        *) die "env takes nothing, 'gpu' or 'nogpu'" ;;
    esac
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env "${2:-}" ;;
    purge)
        cmd_down
        rm -rf "$STATE"
        log "removed $STATE"
        ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
