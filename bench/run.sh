#!/usr/bin/env bash
# Side-by-side benchmark of hashgate against HAProxy and nginx on loopback.
#
#   bench/run.sh            full run (about 14 minutes on 2 cores)
#   bench/run.sh --quick    smoke test: one round, short phases (about 2 minutes)
#
# Environment overrides: ROUNDS, DURATION, WARMUP (seconds), IDLE_CONNS,
# WS_TUNNELS, WS_MESSAGES, CANDIDATES (space list, from: direct haproxy-1
# haproxy-2 nginx-1 nginx-2 hashgate-1 hashgate-2, and hashgateprev-1/-2: the
# balancer binary HASHGATE_PREV_BIN, e.g. a build of the previous commit,
# to measure a change side by side), PHASES (subset of
# "http idle ws"), STATUS_PORT (13009), GEN_CPUS / BACKEND_CPUS / LB1_CPUS /
# LB2_CPUS (CPU lists for taskset: 1 / 0 / 0 / 0,1; empty = not pinned).
#
# Writes bench/results-<date>.md (…-quick.md for --quick) and prints it.
# See bench/README.md for what is measured and why it is set up this way.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^set /{/^#/p}' "$0"
            exit 0
            ;;
        *) die "unknown argument $arg (try --help)" ;;
    esac
done

if ((QUICK)); then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3} WARMUP=${WARMUP:-1}
    IDLE_CONNS=${IDLE_CONNS:-1000} WS_TUNNELS=${WS_TUNNELS:-200} WS_MESSAGES=${WS_MESSAGES:-5}
else
    ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-8} WARMUP=${WARMUP:-2}
    IDLE_CONNS=${IDLE_CONNS:-5000} WS_TUNNELS=${WS_TUNNELS:-1000} WS_MESSAGES=${WS_MESSAGES:-20}
fi
CANDIDATES=${CANDIDATES:-$ALL_CANDIDATES}
PHASES=${PHASES:-http idle ws}
# wrk threads:connections
LOADS=("1:16" "2:128")
((ROUNDS >= 1 && ROUNDS <= 20)) || die "ROUNDS must be 1..20"
((DURATION >= 1 && DURATION <= 120)) || die "DURATION must be 1..120"
((IDLE_CONNS >= 1 && IDLE_CONNS <= 10000)) || die "IDLE_CONNS must be 1..10000"
((WS_TUNNELS >= 1 && WS_TUNNELS <= 5000)) || die "WS_TUNNELS must be 1..5000"

trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_packages
check_ports_free
raise_fd_limit
make_run_dir
log "run directory $RUN"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log "building hashgate (release)"
(cd "$ROOT" && cargo build --release --quiet --bin balancer)

HTTP_TSV=$RUN/http.tsv IDLE_TSV=$RUN/idle.tsv WS_TSV=$RUN/ws.tsv
: >"$HTTP_TSV"
: >"$IDLE_TSV"
: >"$WS_TSV"

# Key=value fields of a RESULT/READY line, as shell variables prefixed r_.
parse_kv() {
    local kv
    for kv in $1; do
        [[ $kv == *=* ]] && printf -v "r_${kv%%=*}" '%s' "${kv#*=}"
    done
}

# --- phase 1: throughput, latency, CPU ---------------------------------------
phase_http() {
    start_nginx_backends
    local round cand load t c before_ticks after_ticks before_acc after_acc line t0 t1
    for ((round = 1; round <= ROUNDS; round++)); do
        for cand in $CANDIDATES; do
            start_candidate "$cand"
            for load in "${LOADS[@]}"; do
                t=${load%:*} c=${load#*:}
                wrk_run "$t" "$c" "$WARMUP" >/dev/null || true
                before_acc=$(backend_accepts)
                before_ticks=$(candidate_ticks)
                t0=$(date +%s%N)
                line=$(wrk_run "$t" "$c" "$DURATION") || die "wrk failed against $cand"
                t1=$(date +%s%N)
                after_ticks=$(candidate_ticks)
                after_acc=$(backend_accepts)
                parse_kv "$line"
                local errors=$((r_connect + r_read + r_write + r_status + r_timeout))
                printf '%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
                    "$cand" "c$c" "$round" "$r_requests" "$r_duration_us" "$r_p50" "$r_p99" \
                    "$r_p999" "$((after_ticks - before_ticks))" "$(((t1 - t0) / 1000))" \
                    "$((after_acc - before_acc - 1))" "$errors" >>"$HTTP_TSV"
                log "round $round $cand -t$t -c$c: $((r_requests * 1000000 / r_duration_us)) req/s, p99 ${r_p99} us, errors $errors, backend opens $((after_acc - before_acc - 1))"
            done
            stop_candidate
        done
    done
    stop_backends
}

# --- phase 2: memory per idle keep-alive client connection --------------------
phase_idle() {
    start_nginx_backends
    local cand before after out
    for cand in $CANDIDATES; do
        [[ $cand == direct ]] && continue
        start_candidate "$cand"
        wrk_run 1 16 1 >/dev/null || true
        sleep 1
        before=$(candidate_pss_kb)
        out=$RUN/idle-$cand.out
        bg "$out" "$GEN_CPUS" timeout 120 python3 "$BENCH/idle_conns.py" 127.0.0.1 "$LB_PORT" "$IDLE_CONNS" 5
        local client=$BG_PID
        wait_line "$out" '^READY' 90 || die "idle connections to $cand never got ready (see $out)"
        sleep 1
        after=$(candidate_pss_kb)
        wait_line "$out" '^ALIVE' 30 || true
        stop "$client"
        parse_kv "$(grep '^READY' "$out")"
        local alive
        alive=$(awk '/^ALIVE/ { print $2 }' "$out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$cand" "$r_open" "$r_errors" "${alive:-0}" "$before" "$after" >>"$IDLE_TSV"
        log "idle $cand: $r_open open, ${alive:-0} alive, Pss $before -> $after kB"
        stop_candidate
    done
    stop_backends
}

# --- phase 3: WebSocket tunnels ----------------------------------------------
phase_ws() {
    start_ws_backends
    local cand before after out
    for cand in $CANDIDATES; do
        start_candidate "$cand"
        before=$(candidate_pss_kb)
        out=$RUN/ws-$cand.out
        bg "$out" "$GEN_CPUS" timeout 180 python3 "$BENCH/ws.py" client 127.0.0.1 "$TARGET_PORT" \
            "$WS_TUNNELS" "$WS_MESSAGES" 3
        local client=$BG_PID
        wait_line "$out" '^OPEN' 90 || die "WebSocket tunnels through $cand never opened (see $out)"
        sleep 1
        after=$(candidate_pss_kb)
        wait_line "$out" '^RESULT' 150 || die "WebSocket echo through $cand did not finish (see $out)"
        stop "$client"
        parse_kv "$(grep '^RESULT' "$out")"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cand" "$r_open" "$r_open_errors" \
            "$r_failed" "$r_single_p50" "$r_single_p99" "$r_all_p50" "$r_all_p99" \
            "$r_all_msgs_per_s" "$before" "$after" >>"$WS_TSV"
        log "ws $cand: $r_open open, single p50 ${r_single_p50} us, all p99 ${r_all_p99} us, Pss $before -> $after kB"
        stop_candidate
    done
    stop_backends
}

START=$(date +%s)
for phase in $PHASES; do
    case $phase in
        http) phase_http ;;
        idle) phase_idle ;;
        ws) phase_ws ;;
        *) die "unknown phase $phase" ;;
    esac
done
ELAPSED=$(($(date +%s) - START))

suffix=$( ((QUICK)) && echo -quick || true)
OUT=$BENCH/results-$(date +%F)$suffix.md
cmd="bench/run.sh $*"
python3 "$BENCH/report.py" \
    --http "$HTTP_TSV" --idle "$IDLE_TSV" --ws "$WS_TSV" \
    --command "${cmd% }" --rounds "$ROUNDS" --duration "$DURATION" --warmup "$WARMUP" \
    --idle-conns "$IDLE_CONNS" --ws-tunnels "$WS_TUNNELS" --ws-messages "$WS_MESSAGES" \
    --load-before "$LOAD_BEFORE" --load-after "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --elapsed "$ELAPSED" --hz "$HZ" --pinning "wrk/clients: CPU ${GEN_CPUS:-any}; backends: CPU ${BACKEND_CPUS:-any}; 1-thread candidates: CPU ${LB1_CPUS:-any}; 2-thread candidates: CPUs ${LB2_CPUS:-any}" \
    --hashgate-rev "$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet -- src || echo '+dirty')" \
    >"$OUT"
cat "$OUT"
log "written to $OUT (raw data in $RUN)"
