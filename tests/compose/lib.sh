# Helpers for tests/compose/run.sh and tests/swarm/run.sh: packages, dockerd,
# a throw-away MariaDB on the host, HTTP and JSON checks, phase timing,
# teardown. Sourced, not executed.
#
# Everything started here is recorded in a variable and undone by cleanup(),
# which run.sh installs as an EXIT trap, so a failing step leaves nothing behind.

log() { printf '[compose-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# ---- phase timing -----------------------------------------------------------
PHASE_NAME=""
PHASE_START=0
PHASE_REPORT=()
now_ms() { date +%s%3N; }
phase() {
    phase_end
    PHASE_NAME="$1"
    PHASE_START=$(now_ms)
    log "=== $PHASE_NAME"
}
phase_end() {
    [[ -n "$PHASE_NAME" ]] || return 0
    local ms=$(($(now_ms) - PHASE_START))
    PHASE_REPORT+=("$(printf '%7.1fs  %s' "$((ms / 100))e-1" "$PHASE_NAME")")
    log "--- $PHASE_NAME: $((ms / 1000)).$(((ms % 1000) / 100))s"
    PHASE_NAME=""
}

# ---- packages -------------------------------------------------------------
# Installs only what is missing, with one `apt-get update`. policy-rc.d keeps
# apt from starting the system's own dockerd and MariaDB services: this test
# starts (and stops) its own, and must leave the machine as it found it.
ensure_packages() {
    local missing=() pair
    for pair in dockerd:docker.io docker-compose:docker-compose \
        mariadbd:mariadb-server mariadb:mariadb-client curl:curl python3:python3 ip:iproute2; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    # glibc's static libc.a, for the +crt-static binaries docker/build.sh makes.
    dpkg-query -W -f='${Status}' libc6-dev 2>/dev/null | grep -q 'ok installed' ||
        missing+=(libc6-dev)
    [[ ${#missing[@]} -eq 0 ]] && { log "packages: all present"; return 0; }
    log "packages: installing ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 0755 "$policy"
        own_policy=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    local rc=$?
    [[ $own_policy -eq 1 ]] && as_root rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get install ${missing[*]} failed"
}

# ---- dockerd ----------------------------------------------------------------
DOCKERD_PID=""
ensure_dockerd() {
    if docker info >/dev/null 2>&1; then
        log "dockerd: already running, using it"
        return 0
    fi
    log "dockerd: starting one (log $WORK/dockerd.log)"
    # Not through as_root: a backgrounded function is a subshell, and $! would
    # be that subshell, not dockerd (sudo forwards our SIGTERM to its child).
    if [[ $EUID -eq 0 ]]; then
        dockerd >"$WORK/dockerd.log" 2>&1 &
    else
        sudo dockerd >"$WORK/dockerd.log" 2>&1 &
    fi
    DOCKERD_PID=$!
    local i
    for i in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        [[ -d /proc/$DOCKERD_PID ]] || break
        sleep 1
    done
    tail -20 "$WORK/dockerd.log" >&2
    die "dockerd did not come up"
}
stop_dockerd() {
    [[ -n "$DOCKERD_PID" ]] || return 0
    log "dockerd: stopping pid $DOCKERD_PID"
    as_root kill -TERM "$DOCKERD_PID" 2>/dev/null
    local i
    for i in $(seq 30); do [[ -d /proc/$DOCKERD_PID ]] || break; sleep 1; done
    [[ -d /proc/$DOCKERD_PID ]] && as_root kill -KILL "$DOCKERD_PID"
    wait "$DOCKERD_PID" 2>/dev/null
    DOCKERD_PID=""
}

# The default bridge's address (docker0): what `host-gateway` means, and a
# host address every container on this machine reaches. `network inspect`
# only reports it when the gateway was configured explicitly.
docker0_address() {
    local a
    a=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null)
    [[ -n "$a" ]] || a=$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
    [[ -n "$a" ]] || die "cannot find the docker0 address"
    echo "$a"
}

# ---- MariaDB on the host ----------------------------------------------------
# Containers reach it as host.docker.internal, which `host-gateway` maps to
# the default bridge's gateway address; so it listens there only (one address:
# MariaDB 10.11 takes no list), never on every interface. Our own client uses
# the Unix socket. Credentials are placeholders.
MARIADB_PID=""
MARIADB_USER=hashgate
MARIADB_PASSWORD=change-me
MARIADB_DATABASE=kiro_api
start_mariadb() {
    local gateway="$1" port="$2" dir="$WORK/mariadb" user
    user=$(id -un)
    mkdir -p "$dir"
    mariadb-install-db --no-defaults --datadir="$dir/data" --user="$user" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; die "mariadb-install-db failed"; }
    # 10 replicas with a connection pool each: raise the connection limit.
    mariadbd --no-defaults --datadir="$dir/data" --user="$user" \
        --socket="$dir/sock" --pid-file="$dir/pid" --port="$port" \
        --bind-address="$gateway" --skip-name-resolve \
        --max-connections=1000 --innodb-buffer-pool-size=64M \
        --log-error="$dir/error.log" 2>>"$dir/error.log" &
    MARIADB_PID=$!
    local i
    for i in $(seq 60); do
        mariadb --no-defaults --socket="$dir/sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
        kill -0 "$MARIADB_PID" 2>/dev/null || { cat "$dir/error.log" >&2; die "mariadbd exited"; }
        sleep 1
    done
    mariadb --no-defaults --socket="$dir/sock" -uroot <<SQL || die "cannot set up the database"
CREATE DATABASE IF NOT EXISTS $MARIADB_DATABASE;
CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON $MARIADB_DATABASE.* TO '$MARIADB_USER'@'%';
SQL
    log "mariadb: pid $MARIADB_PID on $gateway:$port"
}
stop_mariadb() {
    [[ -n "$MARIADB_PID" ]] || return 0
    log "mariadb: stopping pid $MARIADB_PID"
    kill -TERM "$MARIADB_PID" 2>/dev/null
    local i
    for i in $(seq 30); do kill -0 "$MARIADB_PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$MARIADB_PID" 2>/dev/null && kill -KILL "$MARIADB_PID"
    wait "$MARIADB_PID" 2>/dev/null
    MARIADB_PID=""
}

# ---- teardown ---------------------------------------------------------------
# Makes the test's own cleanup() the EXIT trap; INT and TERM exit through it.
trap_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# The end of a test's EXIT trap, after its own clean-up: the image it built
# ($IMAGE_BUILT, unless KEEP_IMAGE=1), the database, dockerd if it started
# one, the work directory, then the phase report and the verdict for `rc`.
teardown_common() {
    local rc="$1"
    if [[ $IMAGE_BUILT -eq 1 && "${KEEP_IMAGE:-0}" != 1 ]]; then
        docker rmi -f "$IMAGE" >/dev/null 2>&1 || log "cannot remove $IMAGE"
    fi
    stop_mariadb
    stop_dockerd
    rm -rf "$WORK"
    log "phase durations:"
    printf '  %s\n' "${PHASE_REPORT[@]}" >&2
    log "total $((($(now_ms) - TEST_START) / 1000))s: $([[ $rc -eq 0 ]] && echo PASS || echo "FAIL (exit $rc)")"
}

# ---- small utilities --------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# json_get URL PY_EXPR: evaluates PY_EXPR with `d` = the parsed JSON body.
json_get() {
    curl -fsS --max-time 5 "$1" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"
}

# Healthy backends and total backends listed by /lb/status, as "H/T".
lb_counts() {
    json_get "$1/lb/status" \
        '"%d/%d" % (sum(1 for b in d["backends"] if b["healthy"] and b["state"] == "up"), len(d["backends"]))'
}

# wait_backends BASE N SECS: until /lb/status lists exactly N backends, all up.
wait_backends() {
    local base="$1" want="$2" secs="$3" got="" start
    start=$(now_ms)
    while (($(now_ms) - start < secs * 1000)); do
        got=$(lb_counts "$base" 2>/dev/null) || got="unreachable"
        if [[ "$got" == "$want/$want" ]]; then
            log "balancer lists $want healthy backends after $((($(now_ms) - start) / 1000))s"
            return 0
        fi
        sleep 1
    done
    curl -sS --max-time 5 "$base/lb/status" >&2 || true
    die "expected $want/$want healthy backends within ${secs}s, last saw $got"
}

# wait_docker_healthy PROJECT_FN N SECS: until N containers report "healthy".
wait_docker_healthy() {
    local project="$1" want="$2" secs="$3" start states healthy
    start=$(now_ms)
    while (($(now_ms) - start < secs * 1000)); do
        # shellcheck disable=SC2046 # one id per word
        states=$(docker inspect -f '{{.Name}} {{.State.Health.Status}}' $("$project" ps -q))
        healthy=$(grep -c ' healthy$' <<<"$states")
        if [[ $healthy -eq $want ]]; then
            log "docker reports $want healthy containers after $((($(now_ms) - start) / 1000))s"
            return 0
        fi
        sleep 1
    done
    die "expected $want healthy containers within ${secs}s: $(tr '\n' ' ' <<<"$states")"
}
