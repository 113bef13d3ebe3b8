#!/usr/bin/env bash
# Slowloris: DRIPS connections each send one header byte every 5 s and
# never finish their head, while a normal client sends a GET every 50 ms.
# Checks issue 11's "dripping connections are closed by the header
# deadline while normal GETs stay fast", against hashgate (release build)
# and, when installed, HAProxy 2.6 in the same role (timeout http-request
# 10s, hashgate's CLIENT_HEADER_TIMEOUT_SECS default).
#
#   bench/slowloris.sh [DRIPS] [SECS]      # default 2000 connections, 25 s
#
# Loopback only, free ports, one nginx worker as the backend; everything it
# starts is killed on exit. Prints a markdown table: per candidate, the
# drips closed, answered 408, still open, when they were closed, the GETs'
# latency and failures, and the candidate's RSS before / at peak.
set -uo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
DRIPS=${1:-2000}
SECS=${2:-25}
((DRIPS <= 15000)) || { echo "at most 15000 drips (the client's fd limit)" >&2; exit 2; }
((SECS <= 120)) || { echo "at most 120 s" >&2; exit 2; }

DIR=$(mktemp -d /tmp/hashgate-slowloris.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log() { printf '[slowloris %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    local i
    for i in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd "$ROOT" && cargo build --release --bin balancer -q) || exit 1

BACKEND=$(free_port)
mkdir -p "$DIR/tmp"
cat >"$DIR/nginx.conf" <<EOF
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/tmp;
    proxy_temp_path $DIR/tmp;
    fastcgi_temp_path $DIR/tmp;
    uwsgi_temp_path $DIR/tmp;
    scgi_temp_path $DIR/tmp;
    keepalive_requests 10000000;
    server { listen 127.0.0.1:$BACKEND backlog=4096; location / { return 200 "hello\n"; } }
}
EOF
nginx -c "$DIR/nginx.conf" -p "$DIR" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BACKEND" || { log "nginx did not start"; exit 1; }

# run NAME PID PORT: the drip run against a started candidate; one table row.
run() {
    local name=$1 pid=$2 port=$3 before peak=0 r
    before=$(rss_kb "$pid")
    python3 "$BENCH/slowloris.py" 127.0.0.1 "$port" "$DRIPS" "$SECS" >"$DIR/$name.json" &
    local drv=$!
    while kill -0 "$drv" 2>/dev/null; do
        r=$(rss_kb "$pid")
        ((r > peak)) && peak=$r
        sleep 0.5
    done
    wait "$drv"
    python3 - "$name" "$before" "$peak" "$DIR/$name.json" <<'EOF'
import json, sys
name, before, peak, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
d, g = r["drips"], r["gets"]
lo, med, hi = d["closed_after_s"]
print(f"| {name} | {d['opened']:,} | {d['closed']:,} | {d['answered_408']:,} | {d['still_open']:,} "
      f"| {lo} / {med} / {hi} | {g['sent']:,} | {g['failed']} | {g['p50_ms']} / {g['p99_ms']} / {g['max_ms']} "
      f"| {before // 1024} / {peak // 1024} |")
EOF
}

echo
echo "$DRIPS dripping connections (one header byte every 5 s) for $SECS s, a GET every 50 ms alongside:"
echo
echo "| candidate | drips opened | closed by the proxy | answered 408 | still open | closed after s (min / median / max) | GETs | failed | GET ms (p50 / p99 / max) | RSS MiB (before / peak) |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"

LB=$(free_port)
env -i BALANCER_HOST=127.0.0.1 BALANCER_PORT="$LB" BACKEND_HOSTS="127.0.0.1:$BACKEND" \
    RUST_LOG=warn "$ROOT/target/release/balancer" >"$DIR/balancer.log" 2>&1 &
PIDS+=($!)
LB_PID=$!
wait_port "$LB" || { log "the balancer did not start"; cat "$DIR/balancer.log" >&2; exit 1; }
run hashgate "$LB_PID" "$LB"
kill "$LB_PID"

if command -v haproxy >/dev/null; then
    HA=$(free_port)
    cat >"$DIR/haproxy.cfg" <<EOF
global
    maxconn 9000
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
frontend fe
    bind 127.0.0.1:$HA backlog 4096
    default_backend be
backend be
    server b 127.0.0.1:$BACKEND
EOF
    haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 &
    PIDS+=($!)
    HA_PID=$!
    wait_port "$HA" || { log "haproxy did not start"; exit 1; }
    run "HAProxy $(haproxy -v | awk 'NR==1 {print $3}')" "$HA_PID" "$HA"
fi
