#!/usr/bin/env bash
# Chaos under load: a steady load of idempotent GETs from several client
# addresses through the balancer to six API replicas found by DNS, all on
# one MariaDB, while one thing at a time goes wrong. Prints the chaos table:
# per row, the requests started during it, how many failed, and the worst
# latency.
#
#   bench/chaos.sh                   # about 3 minutes
#   KEEP=1 bench/chaos.sh            # keep the run directory (logs) afterwards
#   CHAOS_ROWS="steady db" bench/chaos.sh   # only these rows
#   LB_LOG=debug API_LOG=debug KEEP=1 bench/chaos.sh   # to see why a row failed
#
# Rows, in order (each restores what it broke before the next one):
#   steady          nothing broken, for reference
#   kill            the replica serving the most clients gets SIGKILL;
#                   restarted 10 s later
#   hang            another replica gets SIGSTOP, SIGCONT 10 s later
#   dns down        dnsmasq is killed, restarted 30 s later
#   db down         MariaDB is stopped, started again 10 s later (half the
#                   GETs, /api/v1/workers, need the database)
#   scale 6 -> 3    the DNS answer drops three replicas, which stop
#                   (SIGTERM) at the same moment, as `--scale` does
#   restart         the balancer gets SIGTERM and a new one starts on the
#                   same port at once, three times
#   handover        a new balancer starts on the same port first
#                   (BALANCER_REUSE_PORT), then the old one gets SIGTERM and
#                   drains, three times
#
# Everything is on loopback: replicas on 127.0.3.1-6 (one port), clients
# 127.2.0.1-24, the balancer, dnsmasq and MariaDB on 127.0.0.1, all on free
# ports; everything started is stopped on exit (also on Ctrl-C). Bounded:
# the load runs 200 requests/s for at most 6 minutes, each request at most
# 30 s, every wait has a limit. Needs mariadb-server, dnsmasq, python3
# (Debian packages) and cargo; run as root (dnsmasq, MariaDB's own user).
set -uo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
DIR=$(mktemp -d /tmp/hashgate-chaos.XXXXXX)
ROWS="$DIR/rows"
LOAD="$DIR/load"
: >"$ROWS"

log() { printf '[chaos %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

declare -A PID=()
cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    touch "$DIR/stop"
    for name in "${!PID[@]}"; do kill -CONT "${PID[$name]}" 2>/dev/null; kill "${PID[$name]}" 2>/dev/null; done
    for name in "${!PID[@]}"; do wait "${PID[$name]}" 2>/dev/null; done
    if [[ "${KEEP:-0}" == 1 || $rc -ne 0 ]]; then log "run directory kept: $DIR"; else rm -rf "$DIR"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in mariadbd mariadb-install-db mariadb dnsmasq python3 curl ss cargo; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || die "$tool is missing"
done
export PATH="$PATH:/usr/sbin"

log "building (release)"
(cd "$ROOT" && cargo build --release -q --bin balancer --bin api) || die "build failed"
BIN="$ROOT/target/release"

LB_PORT=$(free_port)
API_PORT=$(free_port)
DB_PORT=$(free_port)
DNS_PORT=$(free_port)
REPLICAS=(1 2 3 4 5 6)
replica_ip() { echo "127.0.3.$1"; }
NAME=api.chaos.test

# ---- MariaDB -------------------------------------------------------------
DB_USER=hashgate
DB_PASSWORD=chaos-placeholder-pw
start_db() {
    mariadbd --no-defaults --datadir="$DIR/db" --tmpdir="$DIR/dbtmp" --user="$(id -un)" --socket="$DIR/db.sock" \
        --pid-file="$DIR/db.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --skip-name-resolve --max-connections=500 --innodb-buffer-pool-size=64M \
        --log-error="$DIR/db.log" &
    PID[db]=$!
    local i
    for i in $(seq 60); do
        mariadb --no-defaults --socket="$DIR/db.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "MariaDB did not start (see $DIR/db.log)"
}
stop_db() {
    kill "${PID[db]}" && wait "${PID[db]}" 2>/dev/null
    unset 'PID[db]'
}
# Its own tmpdir: bootstraps side by side in one /tmp trip over each
# other's temp tables (see tests/support/mariadb.rs).
mkdir -p "$DIR/dbtmp"
mariadb-install-db --no-defaults --datadir="$DIR/db" --tmpdir="$DIR/dbtmp" --user="$(id -un)" \
    --auth-root-authentication-method=socket --skip-test-db >"$DIR/db-install.log" 2>&1 ||
    die "mariadb-install-db failed"
start_db
mariadb --no-defaults --socket="$DIR/db.sock" -uroot <<SQL || die "database set-up failed"
CREATE DATABASE kiro_api;
CREATE USER '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON kiro_api.* TO '$DB_USER'@'%';
SQL

# ---- dnsmasq ---------------------------------------------------------------
set_dns() {
    local i
    : >"$DIR/hosts.new"
    for i in "$@"; do echo "$(replica_ip "$i") $NAME" >>"$DIR/hosts.new"; done
    mv "$DIR/hosts.new" "$DIR/hosts"
    [[ -n "${PID[dns]:-}" ]] && kill -HUP "${PID[dns]}"
    return 0
}
start_dns() {
    dnsmasq --no-daemon --conf-file=/dev/null --port="$DNS_PORT" --listen-address=127.0.0.1 \
        --bind-interfaces --no-resolv --no-hosts --addn-hosts="$DIR/hosts" --local-ttl=600 \
        --local=/test/ --pid-file="$DIR/dns.pid" --user=root --group=root 2>>"$DIR/dns.log" &
    PID[dns]=$!
    sleep 0.5
    kill -0 "${PID[dns]}" 2>/dev/null || die "dnsmasq did not start (see $DIR/dns.log)"
}
set_dns "${REPLICAS[@]}"
start_dns

# ---- replicas and balancer -------------------------------------------------
start_api() {
    local i=$1
    env -i API_HOST="$(replica_ip "$i")" PORT="$API_PORT" INSTANCE_ID="api-$i" \
        MYSQL_HOST=127.0.0.1 MYSQL_PORT="$DB_PORT" MYSQL_USER="$DB_USER" \
        MYSQL_PASSWORD="$DB_PASSWORD" MYSQL_DATABASE=kiro_api RUST_LOG="${API_LOG:-warn}" ${API_ENV:-} \
        "$BIN/api" >>"$DIR/api-$i.log" 2>&1 &
    PID[api-$i]=$!
}
start_lb() {
    env -i BALANCER_HOST=127.0.0.1 BALANCER_PORT="$LB_PORT" BALANCER_REUSE_PORT=true BACKEND_DNS="$NAME" \
        BACKEND_PORT="$API_PORT" DNS_SERVER="127.0.0.1:$DNS_PORT" DNS_REFRESH_SECS=5 \
        RUST_LOG="${LB_LOG:-info}" "$BIN/balancer" >>"$DIR/balancer.log" 2>&1 &
    PID[lb]=$!
}
LB="http://127.0.0.1:$LB_PORT"
# up_backends: how many backends /lb/status shows up.
up_backends() {
    curl -fsS --max-time 2 "$LB/lb/status" 2>/dev/null |
        python3 -c 'import json,sys; print(sum(b["state"] == "up" for b in json.load(sys.stdin)["backends"]))' 2>/dev/null ||
        echo 0
}
wait_up() {
    local want=$1 i
    for i in $(seq 120); do
        [[ "$(up_backends)" == "$want" ]] && return 0
        sleep 0.5
    done
    die "the balancer did not show $want backends up (see $DIR/balancer.log)"
}
for i in "${REPLICAS[@]}"; do start_api "$i"; done
start_lb
wait_up 6
log "6 replicas up behind 127.0.0.1:$LB_PORT"

# ---- load and rows -----------------------------------------------------------
python3 "$BENCH/chaos_load.py" "127.0.0.1:$LB_PORT" "$LOAD" --clients 24 --rate 200 \
    --paths /api/client-ip,/api/v1/workers --timeout 30 --secs 360 --stop-file "$DIR/stop" \
    2>"$DIR/load.err" &
PID[load]=$!
sleep 2

# row NAME: the row starts now; end_row closes it.
ROW_NAME="" ROW_START=""
row() { ROW_NAME=$1; ROW_START=$(now); log "row: $ROW_NAME"; }
end_row() { echo "$ROW_START $(now) $ROW_NAME" >>"$ROWS"; }
# The replica that answered most requests since unix time $1, among $2...
busiest() {
    local since=$1
    shift
    python3 - "$LOAD" "$since" "$@" <<'EOF'
import collections, sys
path, since, allowed = sys.argv[1], float(sys.argv[2]), set(sys.argv[3:])
seen = collections.Counter()
for line in open(path):
    f = line.split()
    if len(f) >= 8 and float(f[0]) >= since and f[6] in allowed:
        seen[f[6]] += 1
print(seen.most_common(1)[0][0].split("-")[1] if seen else sorted(allowed)[0].split("-")[1])
EOF
}

victim="" hung=""
row_steady() {
    row "steady load, nothing broken (10 s)"
    sleep 10
    end_row
}

row_kill() {
    victim=$(busiest "$LOAD_START" api-1 api-2 api-3 api-4 api-5 api-6)
    row "a replica killed (SIGKILL; api-$victim, the busiest), restarted after 10 s"
    kill -KILL "${PID[api-$victim]}"
    wait "${PID[api-$victim]}" 2>/dev/null
    sleep 10
    start_api "$victim"
    wait_up 6
    sleep 3
    end_row
}

row_hang() {
    local others=() i
    for i in "${REPLICAS[@]}"; do [[ $i != "$victim" ]] && others+=("api-$i"); done
    hung=$(busiest "$LOAD_START" "${others[@]}")
    row "a replica hung (SIGSTOP 10 s; api-$hung)"
    kill -STOP "${PID[api-$hung]}"
    sleep 10
    kill -CONT "${PID[api-$hung]}"
    wait_up 6
    sleep 5
    end_row
}

row_dns() {
    row "the DNS server down 30 s (killed, restarted)"
    kill "${PID[dns]}" && wait "${PID[dns]}" 2>/dev/null
    unset 'PID[dns]'
    sleep 30
    start_dns
    sleep 5
    end_row
}

row_db() {
    row "MariaDB down 10 s (half the GETs need it)"
    local t0
    t0=$(date +%s)
    stop_db
    sleep $((t0 + 10 - $(date +%s) > 0 ? t0 + 10 - $(date +%s) : 0))
    start_db
    sleep 10
    wait_up 6
    end_row
}

row_scale() {
    row "DNS answer 6 -> 3 (three replicas stop at the same moment)"
    local i
    set_dns 1 2 3
    for i in 4 5 6; do kill "${PID[api-$i]}"; done
    for i in 4 5 6; do
        wait "${PID[api-$i]}" 2>/dev/null
        unset "PID[api-$i]"
    done
    for i in $(seq 60); do
        [[ "$(curl -fsS --max-time 2 "$LB/lb/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["backends"]))' 2>/dev/null)" == 3 ]] && break
        sleep 0.5
    done
    sleep 5
    end_row
}

row_restart() {
    row "the balancer restarted 3 times (SIGTERM, a new one started at once)"
    local i
    for i in 1 2 3; do
        kill "${PID[lb]}"
        wait "${PID[lb]}" 2>/dev/null
        start_lb
        wait_up "$(up_count_expected)"
        sleep 3
    done
    end_row
}
# The handover that avoids the restart row's refusals: the new balancer
# starts on the same port first (SO_REUSEPORT), the old one drains after.
row_handover() {
    row "the balancer replaced 3 times (a new one on the port first, SO_REUSEPORT; then SIGTERM to the old)"
    local i j old
    for i in 1 2 3; do
        old=${PID[lb]}
        start_lb
        PID[lb-old]=$old
        for j in $(seq 50); do
            [[ $(ss -Hltn "sport = :$LB_PORT" | wc -l) -ge 2 ]] && break
            sleep 0.1
        done
        sleep 1
        kill "$old"
        wait "$old" 2>/dev/null
        unset 'PID[lb-old]'
        wait_up "$(up_count_expected)"
        sleep 3
    done
    end_row
}
# Replicas still running (the scale row stops three).
up_count_expected() {
    local n=0 i
    for i in "${REPLICAS[@]}"; do [[ -n "${PID[api-$i]:-}" ]] && n=$((n + 1)); done
    echo "$n"
}

LOAD_START=$(now)
for r in ${CHAOS_ROWS:-steady kill hang dns db scale restart handover}; do
    "row_$r"
done

touch "$DIR/stop"
wait "${PID[load]}" 2>/dev/null
unset 'PID[load]'

echo
echo "Chaos under load: 24 client addresses, 200 GETs/s (/api/client-ip and /api/v1/workers in turn), 6 replicas found by DNS, $(date -u +%Y-%m-%d):"
echo
python3 "$BENCH/chaos_report.py" "$LOAD" "$ROWS"
