#!/usr/bin/env bash
# Provision and run TimescaleDB (PostgreSQL + timescaledb, Apache edition) for
# hazmon's tests and benchmarks on a Debian 12 host, where TimescaleDB is not
# packaged: a Debian sid chroot is built once with debootstrap and the server
# runs inside it, listening on 127.0.0.1 only.
#
# Usage: deploy/timescaledb.sh [start|stop|status|url|help]
#   start   (default) build the chroot if needed, initdb if needed, start the
#           server if it is not already answering, make sure the timescaledb
#           extension can be created; the LAST line of stdout is the URL.
#   stop    stop the server (no-op when it is not running).
#   status  exit 0 when the server is running and answering, 1 otherwise.
#   url     print the connection URL only.
#
# Environment:
#   HAZMON_TSDB_PORT          TCP port on 127.0.0.1            (default 5433)
#   HAZMON_TSDB_CHROOT        chroot directory   (default /var/lib/hazmon/timescaledb-chroot)
#   HAZMON_TSDB_PG_MAJOR      PostgreSQL major to install when the chroot is
#                             built (default: the highest N for which the
#                             archive has postgresql-N and
#                             postgresql-N-timescaledb; 18 if detection fails)
#   HAZMON_TSDB_MIRROR        Debian mirror URI for debootstrap (default: the
#                             URI of this host's apt sources, else debootstrap's)
#   HAZMON_TSDB_LOCK_TIMEOUT  seconds to wait for another run's lock (default 900)
#   HAZMON_TSDB_START_TIMEOUT seconds to wait for the server to answer (default 60)
#
# Root is required for start/stop (chroot). Everything but the URL goes to stderr.
set -euo pipefail

PORT="${HAZMON_TSDB_PORT:-5433}"
CHROOT="${HAZMON_TSDB_CHROOT:-/var/lib/hazmon/timescaledb-chroot}"
LOCK_TIMEOUT="${HAZMON_TSDB_LOCK_TIMEOUT:-900}"
START_TIMEOUT="${HAZMON_TSDB_START_TIMEOUT:-60}"
DEBOOTSTRAP_TIMEOUT=1200
DEFAULT_PG_MAJOR=18
MARKER_NAME=".hazmon-tsdb-complete"
MARKER="$CHROOT/$MARKER_NAME"
# Paths as seen inside the chroot.
DATA_IN=/var/lib/postgresql/hazmon-data
LOG_IN=/var/lib/postgresql/hazmon-server.log
SOCK_IN=/tmp
URL="postgresql://postgres@127.0.0.1:${PORT}/postgres"

log() { printf '[timescaledb] %s\n' "$*" >&2; }
die() { printf '[timescaledb] ERROR: %s\n' "$*" >&2; exit 1; }

validate() {
    [[ "$PORT" =~ ^[0-9]+$ ]] && (( PORT >= 1 && PORT <= 65535 )) \
        || die "HAZMON_TSDB_PORT must be a TCP port number, got '$PORT'"
    [[ "$CHROOT" == /* ]] || die "HAZMON_TSDB_CHROOT must be an absolute path, got '$CHROOT'"
    CHROOT="${CHROOT%/}"
    [[ -n "$CHROOT" && "$CHROOT" != "/" ]] || die "HAZMON_TSDB_CHROOT must not be /"
    MARKER="$CHROOT/$MARKER_NAME"
    [[ "$LOCK_TIMEOUT" =~ ^[0-9]+$ ]] || die "HAZMON_TSDB_LOCK_TIMEOUT must be an integer"
    [[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "HAZMON_TSDB_START_TIMEOUT must be an integer"
    if [[ -n "${HAZMON_TSDB_PG_MAJOR:-}" ]]; then
        [[ "$HAZMON_TSDB_PG_MAJOR" =~ ^[0-9]+$ ]] \
            || die "HAZMON_TSDB_PG_MAJOR must be a number, got '$HAZMON_TSDB_PG_MAJOR'"
    fi
}

need_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (uses chroot and debootstrap)"
}

# Take an exclusive lock so concurrent runs serialise. The lock fd (9) must
# never leak into the postmaster: see start_server.
take_lock() {
    mkdir -p "$(dirname "$CHROOT")"
    exec 9>>"$CHROOT.lock"
    if ! flock -w "$LOCK_TIMEOUT" 9; then
        die "another run holds $CHROOT.lock for more than ${LOCK_TIMEOUT}s; giving up"
    fi
}

# ---------------------------------------------------------------- chroot ----

marker_get() { # key -> value from the marker file
    sed -n "s/^$1=//p" "$MARKER" 2>/dev/null | head -n1
}

chroot_complete() { [[ -f "$MARKER" ]]; }

pg_major() {
    local m
    m="$(marker_get pg_major)"
    [[ -n "$m" ]] || die "marker $MARKER has no pg_major; remove $CHROOT and rerun"
    printf '%s' "$m"
}

# The mirror: explicit env, else the first non-security URI of the host's apt
# sources (deb822 or one-line format), else empty = debootstrap's default.
detect_mirror() {
    if [[ -n "${HAZMON_TSDB_MIRROR:-}" ]]; then
        printf '%s' "$HAZMON_TSDB_MIRROR"; return
    fi
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        uri="$(awk 'tolower($1)=="uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
            /etc/apt/sources.list.d/debian.sources)"
    fi
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri="$(awk '$1=="deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { if ($i !~ /security/) print $i; break } }' \
            /etc/apt/sources.list | head -n1)"
    fi
    printf '%s' "$uri"
}

ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v wget >/dev/null 2>&1 || missing+=(wget)
    command -v gpgv >/dev/null 2>&1 || missing+=(gpgv)
    command -v flock >/dev/null 2>&1 || missing+=(util-linux)
    [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
    if (( ${#missing[@]} )); then
        log "installing host packages: ${missing[*]}"
        timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive timeout 900 \
            apt-get install -y -qq "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# Highest N such that sid has both postgresql-N and postgresql-N-timescaledb,
# read with apt from a private, throw-away package list. Empty on failure.
detect_pg_major() {
    local mirror="$1" tmp n
    if [[ -z "$mirror" ]]; then # debootstrap's own default, read from debootstrap itself
        mirror="$(sed -n 's/^DEF_MIRROR="\(.*\)"$/\1/p' "$(command -v debootstrap)" | head -n1)"
        [[ -n "$mirror" ]] || return 0
    fi
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    : >"$tmp/status"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s sid main\n' \
        "$mirror" >"$tmp/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/none"
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
        -o "Dir::State::status=$tmp/status" -o Debug::NoLocking=1 -o Acquire::Languages=none)
    n=""
    if timeout 180 apt-get "${opts[@]}" -qq update >/dev/null 2>&1; then
        local names
        names="$(apt-cache "${opts[@]}" pkgnames postgresql- 2>/dev/null || true)"
        n="$(grep -E '^postgresql-[0-9]+-timescaledb$' <<<"$names" | sed -E 's/^postgresql-([0-9]+)-timescaledb$/\1/' \
            | sort -n -r | while read -r v; do
                if grep -qx "postgresql-$v" <<<"$names"; then echo "$v"; break; fi
            done || true)"
    fi
    rm -rf "$tmp"
    printf '%s' "$n"
}

# Unmount anything left mounted below $1 (an interrupted debootstrap or apt
# run can leave proc/sys mounted), deepest first.
unmount_below() {
    local dir="$1" m
    while read -r m; do
        [[ -n "$m" ]] || continue
        umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
    done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

remove_tree() { # a directory we created (chroot under construction)
    local dir="$1"
    [[ -e "$dir" ]] || return 0
    unmount_below "$dir"
    if awk -v d="$dir/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        die "$dir still has mounts below it; unmount them and rerun"
    fi
    rm -rf --one-file-system -- "$dir"
}

build_chroot() {
    if [[ -e "$CHROOT" ]]; then
        die "$CHROOT exists but is not a complete hazmon chroot (no $MARKER_NAME); remove it (rm -rf --one-file-system $CHROOT) or set HAZMON_TSDB_CHROOT"
    fi
    ensure_host_tools
    local mirror major staging t0 t1
    mirror="$(detect_mirror)"
    if [[ -n "${HAZMON_TSDB_PG_MAJOR:-}" ]]; then
        major="$HAZMON_TSDB_PG_MAJOR"
    else
        log "detecting the newest postgresql-N-timescaledb in Debian sid ..."
        major="$(detect_pg_major "$mirror")"
        if [[ -z "$major" ]]; then
            major="$DEFAULT_PG_MAJOR"
            log "warning: detection failed; using PostgreSQL $major (set HAZMON_TSDB_PG_MAJOR to override)"
        fi
    fi
    local pkgs="postgresql-$major,postgresql-$major-timescaledb"
    staging="$CHROOT.partial"
    remove_tree "$staging" # leftovers of an interrupted build
    log "building Debian sid chroot in $staging with $pkgs (about 40 s, about 530 MB) ..."
    t0=$(date +%s)
    local args=(--variant=minbase "--include=$pkgs" sid "$staging")
    [[ -n "$mirror" ]] && args+=("$mirror")
    local dblog="$CHROOT.debootstrap.log"
    # timeout(1) puts debootstrap in its own process group, so a Ctrl-C or
    # TERM aimed at us would not reach it: forward those signals explicitly.
    local dbs_rc=0
    timeout "$DEBOOTSTRAP_TIMEOUT" debootstrap "${args[@]}" >"$dblog" 2>&1 </dev/null &
    DBS_PID=$!
    trap 'kill -TERM "$DBS_PID" 2>/dev/null || true; wait "$DBS_PID" 2>/dev/null || true; die "interrupted during debootstrap; the next run starts the chroot over"' INT TERM HUP
    wait "$DBS_PID" || dbs_rc=$?
    trap - INT TERM HUP
    if (( dbs_rc != 0 )); then
        tail -n 30 "$dblog" >&2 || true
        [[ -f "$staging/debootstrap/debootstrap.log" ]] && tail -n 30 "$staging/debootstrap/debootstrap.log" >&2
        remove_tree "$staging"
        die "debootstrap failed (exit $dbs_rc; 124 = timed out; log: $dblog); if postgresql-$major-timescaledb no longer exists in sid, set HAZMON_TSDB_PG_MAJOR"
    fi
    unmount_below "$staging"
    [[ -x "$staging/usr/lib/postgresql/$major/bin/postgres" ]] \
        || { remove_tree "$staging"; die "chroot lacks /usr/lib/postgresql/$major/bin/postgres"; }
    ls "$staging/usr/lib/postgresql/$major/lib/"timescaledb*.so >/dev/null 2>&1 \
        || { remove_tree "$staging"; die "chroot lacks the timescaledb library for PostgreSQL $major"; }
    fix_devices "$staging"
    local tsver
    tsver="$(chroot "$staging" dpkg-query -W -f='${Version}' "postgresql-$major-timescaledb" 2>/dev/null || echo unknown)"
    t1=$(date +%s)
    {
        echo "pg_major=$major"
        echo "timescaledb_version=$tsver"
        echo "mirror=${mirror:-debootstrap-default}"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "build_seconds=$((t1 - t0))"
    } >"$staging/$MARKER_NAME.tmp"
    mv "$staging/$MARKER_NAME.tmp" "$staging/$MARKER_NAME"
    sync -f "$staging/$MARKER_NAME" 2>/dev/null || true
    mv -T "$staging" "$CHROOT"
    log "chroot ready in $((t1 - t0)) s: PostgreSQL $major, timescaledb $tsver"
}

# debootstrap in a container may leave /dev without real device nodes.
fix_devices() {
    local root="$1" spec name type maj min
    for spec in "null c 1 3" "zero c 1 5" "random c 1 8" "urandom c 1 9"; do
        read -r name type maj min <<<"$spec"
        if [[ ! -c "$root/dev/$name" ]]; then
            rm -f "$root/dev/$name"
            mknod -m 666 "$root/dev/$name" "$type" "$maj" "$min" \
                || die "cannot create $root/dev/$name"
        fi
    done
    mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
}

# --------------------------------------------------------------- server ----

# Run a command inside the chroot as its postgres user, with a clean env.
as_pg() {
    local major uid gid
    major="$(pg_major)"
    uid="$(awk -F: '$1=="postgres" { print $3 }' "$CHROOT/etc/passwd")"
    gid="$(awk -F: '$1=="postgres" { print $4 }' "$CHROOT/etc/passwd")"
    [[ -n "$uid" && -n "$gid" ]] || die "no postgres user in $CHROOT/etc/passwd"
    local chroot_bin; chroot_bin="$(command -v chroot)" || die "chroot not found"
    env -i HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres LANG=C.UTF-8 \
        PATH="/usr/lib/postgresql/$major/bin:/usr/bin:/bin" PGPORT="$PORT" \
        "$chroot_bin" --userspec="$uid:$gid" "$CHROOT" "$@"
}

# The server answers on 127.0.0.1:PORT (a read-only check; host or chroot tools).
answering() {
    if chroot_complete && [[ "$(id -u)" == 0 ]]; then
        as_pg pg_isready -q -h 127.0.0.1 -p "$PORT" -t 3 >/dev/null 2>&1
    elif command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h 127.0.0.1 -p "$PORT" -t 3 >/dev/null 2>&1
    else
        return 1
    fi
}

# PID of our postmaster if it is alive, else empty.
our_postmaster_pid() {
    local pidfile="$CHROOT$DATA_IN/postmaster.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(head -n1 "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if [[ -r "/proc/$pid/comm" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == postgres* ]]; then
        printf '%s' "$pid"
    fi
}

our_postmaster_port() {
    sed -n '4p' "$CHROOT$DATA_IN/postmaster.pid" 2>/dev/null || true
}

ensure_initdb() {
    if [[ -f "$CHROOT$DATA_IN/PG_VERSION" ]]; then
        return 0
    fi
    local major; major="$(pg_major)"
    if [[ -e "$CHROOT$DATA_IN" ]]; then
        log "removing incomplete data directory $CHROOT$DATA_IN"
        rm -rf --one-file-system -- "$CHROOT$DATA_IN"
    fi
    log "initdb (PostgreSQL $major) in $CHROOT$DATA_IN ..."
    rm -rf --one-file-system -- "$CHROOT$DATA_IN.tmp"
    if ! as_pg initdb -D "$DATA_IN.tmp" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C.UTF-8 >"$CHROOT$LOG_IN.initdb" 2>&1 </dev/null; then
        tail -n 30 "$CHROOT$LOG_IN.initdb" >&2 || true
        rm -rf --one-file-system -- "$CHROOT$DATA_IN.tmp"
        die "initdb failed"
    fi
    mv -T "$CHROOT$DATA_IN.tmp" "$CHROOT$DATA_IN"
}

start_server() {
    local pid port
    pid="$(our_postmaster_pid)"
    if [[ -n "$pid" ]]; then
        port="$(our_postmaster_port)"
        if [[ "$port" != "$PORT" ]]; then
            die "our server (pid $pid) runs on port $port, not $PORT; run with HAZMON_TSDB_PORT=$port '$0' stop first"
        fi
        if answering; then
            log "already running (pid $pid) on 127.0.0.1:$PORT"
            return 0
        fi
        log "server pid $pid exists but does not answer yet; waiting"
    else
        if answering; then
            die "something else answers on 127.0.0.1:$PORT; choose another HAZMON_TSDB_PORT"
        fi
        # A stale pid file (crash, reboot) whose pid now belongs to something else.
        if [[ -f "$CHROOT$DATA_IN/postmaster.pid" ]]; then
            log "removing stale postmaster.pid"
            rm -f "$CHROOT$DATA_IN/postmaster.pid" "$CHROOT$SOCK_IN/.s.PGSQL.$PORT.lock"
        fi
        log "starting PostgreSQL $(pg_major) + timescaledb on 127.0.0.1:$PORT ..."
        local opts="-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$SOCK_IN"
        opts+=" -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
        opts+=" -c dynamic_shared_memory_type=mmap -c max_connections=200"
        opts+=" -c shared_buffers=256MB -c max_locks_per_transaction=256"
        opts+=" -c timescaledb.max_background_workers=8 -c max_worker_processes=16"
        # Start in a subshell that closes every fd above 2 (our flock fd and
        # anything inherited from the caller), so the daemon never holds the
        # lock or a caller's pipe open.
        local rc=0
        (
            for fd in /proc/$BASHPID/fd/*; do
                fd="${fd##*/}"
                (( fd > 2 )) && eval "exec $fd>&-" 2>/dev/null
            done
            as_pg pg_ctl start -D "$DATA_IN" -l "$LOG_IN" -s -o "$opts" -w -t "$START_TIMEOUT" \
                </dev/null >&2
        ) || rc=$?
        if (( rc != 0 )); then
            tail -n 30 "$CHROOT$LOG_IN" >&2 2>/dev/null || true
            die "pg_ctl start failed (exit $rc); server log: $CHROOT$LOG_IN"
        fi
    fi
    wait_ready
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT))
    until answering; do
        if (( SECONDS >= deadline )); then
            tail -n 30 "$CHROOT$LOG_IN" >&2 2>/dev/null || true
            die "server did not accept connections on 127.0.0.1:$PORT within ${START_TIMEOUT}s"
        fi
        if [[ -z "$(our_postmaster_pid)" ]]; then
            tail -n 30 "$CHROOT$LOG_IN" >&2 2>/dev/null || true
            die "server exited during start-up; server log: $CHROOT$LOG_IN"
        fi
        sleep 0.5
    done
}

psql_in() { # run SQL in the chroot's psql over TCP; extra args are psql args
    as_pg timeout 60 psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@" </dev/null
}

verify_extension() {
    local out
    if ! out="$(psql_in -d postgres -At \
            -c 'SET client_min_messages = warning' \
            -c 'CREATE EXTENSION IF NOT EXISTS timescaledb' \
            -c "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'" \
            -c 'SHOW timescaledb.license' 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "CREATE EXTENSION timescaledb failed"
    fi
    out="$(grep -v '^$' <<<"$out" | tr '\n' ' ')"
    log "timescaledb ready (extversion, license: $out)"
}

stop_server() {
    local pid
    pid="$(our_postmaster_pid)"
    if [[ -z "$pid" ]]; then
        log "not running"
        return 0
    fi
    log "stopping server (pid $pid) ..."
    if ! as_pg pg_ctl stop -D "$DATA_IN" -m fast -w -t 60 -s </dev/null >&2; then
        log "fast shutdown did not finish; trying immediate"
        as_pg pg_ctl stop -D "$DATA_IN" -m immediate -w -t 30 -s </dev/null >&2 \
            || die "could not stop the server (pid $pid)"
    fi
    log "stopped"
}

# ----------------------------------------------------------------- main ----

cmd_start() {
    need_root
    take_lock
    if chroot_complete; then
        local have; have="$(pg_major)"
        if [[ -n "${HAZMON_TSDB_PG_MAJOR:-}" && "$HAZMON_TSDB_PG_MAJOR" != "$have" ]]; then
            die "$CHROOT holds PostgreSQL $have but HAZMON_TSDB_PG_MAJOR=$HAZMON_TSDB_PG_MAJOR; stop and remove the chroot, or use another HAZMON_TSDB_CHROOT"
        fi
    else
        build_chroot
    fi
    ensure_initdb
    start_server
    verify_extension
    printf '%s\n' "$URL"
}

cmd_stop() {
    need_root
    take_lock
    if ! chroot_complete; then
        log "no chroot at $CHROOT; nothing to stop"
        return 0
    fi
    stop_server
}

cmd_status() {
    if chroot_complete; then
        local pid; pid="$(our_postmaster_pid)"
        if [[ "$(id -u)" != 0 && -z "$pid" ]]; then
            pid="?" # the data directory is not readable: trust the port check
        fi
        if [[ -n "$pid" ]] && answering; then
            log "running (pid $pid, PostgreSQL $(pg_major), timescaledb $(marker_get timescaledb_version)) at $URL"
            return 0
        fi
        [[ "$pid" == "?" ]] && pid=""
        if [[ -n "$pid" ]]; then
            log "process $pid exists but does not answer on 127.0.0.1:$PORT"
        else
            log "not running (chroot $CHROOT present)"
        fi
    else
        log "not provisioned (no complete chroot at $CHROOT)"
    fi
    return 1
}

main() {
    validate
    local cmd="${1:-start}"
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        url) printf '%s\n' "$URL" ;;
        -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2 ;;
        *) die "unknown subcommand '$cmd' (use start, stop, status, url)" ;;
    esac
}

main "$@"
