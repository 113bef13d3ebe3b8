#!/usr/bin/env bash
# Profiles hashgate under wrk load with perf (Debian: linux-perf): the same
# backends and pinning as run.sh, one candidate, one load.
#
#   bench/profile.sh [THREADS] [CONNS] [SECS]     defaults: 1 16 15
#
# Prints the top self costs (symbols and shared objects) and the top
# inclusive costs; perf.data stays in the run directory for `perf report -i`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

THREADS=${1:-1} CONNS=${2:-16} SECS=${3:-15}
((SECS >= 1 && SECS <= 120)) || die "SECS must be 1..120"
wrk_threads=$((CONNS >= 64 ? 2 : 1))

trap cleanup EXIT
trap 'exit 130' INT TERM
ensure_packages
command -v perf >/dev/null || { apt-get update && apt-get install -y linux-perf; }
perf stat -e instructions true >/dev/null 2>&1 || die "perf cannot count here (perf_event_paranoid?)"
check_ports_free
raise_fd_limit
make_run_dir
(cd "$ROOT" && cargo build --release --quiet --bin balancer)

start_nginx_backends
start_candidate "hashgate-$THREADS"
wrk_run "$wrk_threads" "$CONNS" 2 >/dev/null || true
bg "$RUN/perf.out" "" perf record -F 999 --call-graph dwarf,16384 -o "$RUN/perf.data" -p "$LB_PID"
perf_pid=$BG_PID
sleep 0.5
line=$(wrk_run "$wrk_threads" "$CONNS" "$SECS")
kill -INT "$perf_pid"
wait "$perf_pid" 2>/dev/null || true
log "wrk: $line"

set +o pipefail # head closes the pipes early
report() { perf report -i "$RUN/perf.data" --stdio --percent-limit 0.8 "$@" 2>/dev/null | grep -v '^$'; }
echo "== self cost by shared object"
report --no-children --sort dso -g none | grep '%' | head -15
echo "== self cost by symbol"
report --no-children --sort symbol -g none | grep '%' | head -45
echo "== inclusive cost by symbol (children)"
report --children --sort symbol -g none | grep '%' | head -60
log "perf data: $RUN/perf.data"
