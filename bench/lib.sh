# Shared by bench/run.sh and bench/profile.sh: packages, the private run
# directory, process bookkeeping (everything started is killed on exit), the
# backends, the candidates and the measurements. Source it; do not run it.
# shellcheck shell=bash

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

LB_PORT=13003
BACKEND_PORTS=(13004 13005 13006 13007 13008)
STATUS_PORT=${STATUS_PORT:-13009}
HZ=$(getconf CLK_TCK)

# CPU placement (see bench/README.md): the load generator owns CPU 1; the
# backends and one-thread candidates share CPU 0; two-thread candidates may
# use both. On a one-CPU machine nothing is pinned.
# Each list can be overridden from the environment (empty: not pinned).
if (($(nproc) >= 2)); then
    GEN_CPUS=${GEN_CPUS-1} BACKEND_CPUS=${BACKEND_CPUS-0} LB1_CPUS=${LB1_CPUS-0} LB2_CPUS=${LB2_CPUS-0,1}
else
    GEN_CPUS= BACKEND_CPUS= LB1_CPUS= LB2_CPUS=
fi

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pin CPUS CMD...: run CMD on CPUS (or unpinned when CPUS is empty).
pin() {
    local cpus=$1
    shift
    if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# Installs what is missing, from Debian's packages, once.
ensure_packages() {
    local missing=() sudo=
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v python3 >/dev/null || missing+=(python3)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v curl >/dev/null || missing+=(curl)
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain first"
    ((${#missing[@]})) || return 0
    (($(id -u) == 0)) || sudo=sudo
    log "installing ${missing[*]}"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
}

# Refuses to start when a port we need is taken (another engineer's cluster).
check_ports_free() {
    local p
    for p in "$LB_PORT" "${BACKEND_PORTS[@]}" "$STATUS_PORT"; do
        if ss -Htln "sport = :$p" | grep -q .; then
            die "port $p is in use; stop what listens there (ss -tlnp 'sport = :$p')"
        fi
    done
}

raise_fd_limit() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
}

# Every candidate runs under the same file-descriptor limit (soft and hard),
# whatever the machine allows the script: what the WebSocket scale step
# fits (about 9,000 tunnels, two descriptors each) depends on it.
CANDIDATE_FD_LIMIT=${CANDIDATE_FD_LIMIT:-20000}

# --- processes ---------------------------------------------------------------

STARTED=()

exec_bg() { exec "$@"; }

# bg LOGFILE CPUS CMD...: start CMD in the background, remembered for cleanup;
# its pid is left in BG_PID.
bg() {
    local logfile=$1 cpus=$2
    shift 2
    # exec, so that $! is the command itself and not a subshell around it.
    if [[ -n $cpus ]]; then
        exec_bg taskset -c "$cpus" "$@" >"$logfile" 2>&1 &
    else
        exec_bg "$@" >"$logfile" 2>&1 &
    fi
    BG_PID=$!
    STARTED+=("$BG_PID")
}

# stop PID: TERM, up to 5 s, then KILL.
stop() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local kept=() p
    for p in "${STARTED[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    STARTED=("${kept[@]}")
}

cleanup() {
    local p
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    STARTED=()
}

# A private directory for configs, pid files and logs.
make_run_dir() {
    RUN=$(mktemp -d "${TMPDIR:-/tmp}/hashgate-bench.XXXXXX")
    mkdir -p "$RUN/tmp"
}

# wait_http PORT [PATH]: until PORT answers 200 (up to 10 s).
wait_http() {
    local port=$1 path=${2:-/} i
    for ((i = 0; i < 100; i++)); do
        [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port$path") == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# wait_line FILE REGEX SECS: until FILE has a line matching REGEX.
wait_line() {
    local file=$1 re=$2 secs=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        grep -qE "$re" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# --- backends ----------------------------------------------------------------

BACKENDS_PID=

start_nginx_backends() {
    sed -e "s|@DIR@|$RUN|g" -e "s|@STATUS_PORT@|$STATUS_PORT|g" \
        "$BENCH/nginx-backends.conf" >"$RUN/nginx-backends.conf"
    bg "$RUN/backends.out" "$BACKEND_CPUS" \
        nginx -p "$RUN" -c "$RUN/nginx-backends.conf" -e "$RUN/backends-error.log" -g 'daemon off;'
    BACKENDS_PID=$BG_PID
    local p
    for p in "${BACKEND_PORTS[@]}"; do wait_http "$p" || die "backend $p did not start (see $RUN)"; done
}

start_ws_backends() {
    bg "$RUN/ws-backends.out" "$BACKEND_CPUS" python3 "$BENCH/ws.py" server "${BACKEND_PORTS[@]}"
    BACKENDS_PID=$BG_PID
    wait_line "$RUN/ws-backends.out" '^LISTENING' 10 || die "WebSocket backends did not start"
}

stop_backends() {
    stop "$BACKENDS_PID"
    BACKENDS_PID=
}

# TCP connections the backends have accepted so far (nginx stub_status).
backend_accepts() {
    # (this request is itself one accepted connection: callers take deltas
    # of two calls, which counts one of them)
    curl -s -m 2 "http://127.0.0.1:$STATUS_PORT/" | awk 'NR == 3 { print $1 }'
}

# --- candidates --------------------------------------------------------------

# All candidates, in the order they are interleaved within a round.
ALL_CANDIDATES="direct haproxy-1 haproxy-2 nginx-1 nginx-2 hashgate-1 hashgate-2"

LB_PID=
TARGET_PORT=

backend_list() {
    local IFS=,
    local hosts=("${BACKEND_PORTS[@]/#/127.0.0.1:}")
    echo "${hosts[*]}"
}

# A command prefix: what follows runs under CANDIDATE_FD_LIMIT descriptors
# (or the hard limit, when that is lower), exec'd, so its pid stays ours.
FD_LIMITED=(bash -c 'ulimit -n "$0" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"' "$CANDIDATE_FD_LIMIT")

# start_candidate NAME: start it on LB_PORT and wait until it proxies.
# NAME is direct, haproxy-N, nginx-N or hashgate-N (N threads/workers).
start_candidate() {
    local name=$1 kind=${1%-*} n=${1##*-} cpus=$LB2_CPUS
    [[ $n == 1 ]] && cpus=$LB1_CPUS
    TARGET_PORT=$LB_PORT
    LB_PID=
    case $kind in
        direct)
            TARGET_PORT=${BACKEND_PORTS[0]}
            return 0
            ;;
        haproxy)
            sed -e "s|@THREADS@|$n|g" "$BENCH/haproxy.cfg" >"$RUN/haproxy.cfg"
            bg "$RUN/$name.log" "$cpus" "${FD_LIMITED[@]}" haproxy -db -f "$RUN/haproxy.cfg"
            ;;
        nginx)
            sed -e "s|@WORKERS@|$n|g" -e "s|@DIR@|$RUN|g" "$BENCH/nginx-lb.conf" >"$RUN/nginx-lb.conf"
            bg "$RUN/$name.log" "$cpus" "${FD_LIMITED[@]}" \
                nginx -p "$RUN" -c "$RUN/nginx-lb.conf" -e "$RUN/lb-error.log" -g 'daemon off;'
            ;;
        hashgate | hashgateprev)
            # hashgateprev-N: another build of the balancer (HASHGATE_PREV_BIN),
            # to measure a change against the commit before it, interleaved.
            local bin=$ROOT/target/release/balancer
            [[ $kind == hashgateprev ]] && bin=${HASHGATE_PREV_BIN:?set HASHGATE_PREV_BIN to a balancer binary}
            bg "$RUN/$name.log" "$cpus" "${FD_LIMITED[@]}" env RUST_LOG=warn BALANCER_HOST=127.0.0.1 \
                BALANCER_PORT="$LB_PORT" BACKEND_HOSTS="$(backend_list)" \
                HEALTH_INTERVAL_SECS=30 WORKER_THREADS="$n" "$bin"
            ;;
        *) die "unknown candidate $name" ;;
    esac
    LB_PID=$BG_PID
    wait_http "$LB_PORT" /ready || die "$name did not start (see $RUN/$name.log)"
}

stop_candidate() {
    stop "$LB_PID"
    LB_PID=
    local i
    # The next candidate binds the same port.
    for ((i = 0; i < 50; i++)); do
        ss -Htln "sport = :$LB_PORT" | grep -q . || return 0
        sleep 0.1
    done
    die "port $LB_PORT still in use after stopping the candidate"
}

# The candidate's processes: the main one and its children (nginx workers).
candidate_pids() {
    [[ -n $LB_PID ]] || return 0
    echo "$LB_PID"
    pgrep -P "$LB_PID" || true
}

# CPU time (clock ticks, user + system) used so far by the candidate.
candidate_ticks() {
    local total=0 pid line
    for pid in $(candidate_pids); do
        line=$(</proc/"$pid"/stat) || continue
        # shellcheck disable=SC2086
        set -- ${line##*) }
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

# Proportional set size (kB) of the candidate's processes.
candidate_pss_kb() {
    local total=0 pid kb
    for pid in $(candidate_pids); do
        kb=$(awk '/^Pss:/ { print $2; exit }' "/proc/$pid/smaps_rollup" 2>/dev/null ||
            awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# Resident set size (kB) of the candidate's processes.
candidate_rss_kb() {
    local total=0 pid kb
    for pid in $(candidate_pids); do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# wrk_run THREADS CONNS SECS [extra args]: wrk on the generator CPU against
# the current target; prints its RESULT line (see latency.lua).
wrk_run() {
    local t=$1 c=$2 d=$3
    shift 3
    pin "$GEN_CPUS" timeout $((d + 30)) \
        wrk -t"$t" -c"$c" -d"${d}s" --timeout 2s -s "$BENCH/latency.lua" "$@" \
        "http://127.0.0.1:$TARGET_PORT/" | grep '^RESULT'
}
