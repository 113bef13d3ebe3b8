#!/usr/bin/env bash
# Side-by-side benchmark of hashgate against HAProxy and nginx on loopback.
#
#   bench/run.sh            full run (about 25 minutes on 2 cores)
#   bench/run.sh --quick    smoke test: one round, short phases (about 2 minutes)
#
# Environment overrides: ROUNDS, DURATION, WARMUP (seconds), IDLE_CONNS,
# WS_ROUNDS, WS_TUNNELS, WS_MESSAGES, WS_PROBE, WS_BUSY_RATE, WS_SCALE_TUNNELS
# (0: no scale step), WS_SCALE_MESSAGES, CANDIDATE_FD_LIMIT (20000),
# CANDIDATES (space list, from: direct haproxy-1
# haproxy-2 nginx-1 nginx-2 hashgate-1 hashgate-2, and hashgateprev-1/-2: the
# balancer binary HASHGATE_PREV_BIN, e.g. a build of the previous commit,
# to measure a change side by side), PHASES (subset of
# "http idle ws"), STATUS_PORT (13009), GEN_CPUS / BACKEND_CPUS / LB1_CPUS /
# LB2_CPUS (CPU lists for taskset: 1 / 0 / 0 / 0,1; empty = not pinned),
# RESULTS (where the report goes).
#
# Writes bench/results-<date>.md (…-quick.md for --quick), or RESULTS, and
# prints it.
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
    WS_ROUNDS=${WS_ROUNDS:-1} WS_PROBE=${WS_PROBE:-300} WS_SCALE_TUNNELS=${WS_SCALE_TUNNELS:-1000}
else
    ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-8} WARMUP=${WARMUP:-2}
    IDLE_CONNS=${IDLE_CONNS:-5000} WS_TUNNELS=${WS_TUNNELS:-1000} WS_MESSAGES=${WS_MESSAGES:-20}
    WS_ROUNDS=${WS_ROUNDS:-5} WS_PROBE=${WS_PROBE:-5000} WS_SCALE_TUNNELS=${WS_SCALE_TUNNELS:-9000}
fi
# Paced load of the "busy" latency step (messages per second over all
# tunnels), and messages per tunnel of the scale step.
WS_BUSY_RATE=${WS_BUSY_RATE:-5000} WS_SCALE_MESSAGES=${WS_SCALE_MESSAGES:-3}
CANDIDATES=${CANDIDATES:-$ALL_CANDIDATES}
PHASES=${PHASES:-http idle ws}
# wrk threads:connections
LOADS=("1:16" "2:128")
((ROUNDS >= 1 && ROUNDS <= 20)) || die "ROUNDS must be 1..20"
((DURATION >= 1 && DURATION <= 120)) || die "DURATION must be 1..120"
((IDLE_CONNS >= 1 && IDLE_CONNS <= 10000)) || die "IDLE_CONNS must be 1..10000"
((WS_TUNNELS >= 1 && WS_TUNNELS <= 5000)) || die "WS_TUNNELS must be 1..5000"
((WS_ROUNDS >= 1 && WS_ROUNDS <= 20)) || die "WS_ROUNDS must be 1..20"
((WS_PROBE >= 10 && WS_PROBE <= 100000)) || die "WS_PROBE must be 10..100000"
((WS_BUSY_RATE >= 1 && WS_BUSY_RATE <= 100000)) || die "WS_BUSY_RATE must be 1..100000"
# HAProxy's maxconn (bench/haproxy.cfg) is 9000, under the 20,000 descriptors
# every candidate gets.
((WS_SCALE_TUNNELS >= 0 && WS_SCALE_TUNNELS <= 9000)) || die "WS_SCALE_TUNNELS must be 0..9000"

trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_packages
check_ports_free
raise_fd_limit
# The clients and backends too: the whole run under the candidates' limit.
ulimit -n "$CANDIDATE_FD_LIMIT" 2>/dev/null || log "descriptor limit stays at $(ulimit -n)"
make_run_dir
log "run directory $RUN"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log "building hashgate (release)"
(cd "$ROOT" && cargo build --release --quiet --bin balancer)

HTTP_TSV=$RUN/http.tsv IDLE_TSV=$RUN/idle.tsv WS_TSV=$RUN/ws.tsv WS_SCALE_TSV=$RUN/ws-scale.tsv
: >"$HTTP_TSV"
: >"$IDLE_TSV"
: >"$WS_TSV"
: >"$WS_SCALE_TSV"

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
# The load client (ws.py load) holds the tunnels and takes its commands on
# a FIFO (fd 7); the probe (ws.py probe) is a process of its own, so its
# round trips do not wait behind the load's Python work.
WS_LOAD_PID=

ws_load_start() {
    local out=$1 n=$2
    rm -f "$RUN/ws-ctl"
    mkfifo "$RUN/ws-ctl"
    # Read-write: opening it never blocks, and the reader below finds a writer.
    exec 7<>"$RUN/ws-ctl"
    if [[ -n $GEN_CPUS ]]; then
        exec_bg taskset -c "$GEN_CPUS" timeout 900 python3 "$BENCH/ws.py" load 127.0.0.1 "$TARGET_PORT" "$n" \
            <"$RUN/ws-ctl" >"$out" 2>&1 7>&- &
    else
        exec_bg timeout 900 python3 "$BENCH/ws.py" load 127.0.0.1 "$TARGET_PORT" "$n" \
            <"$RUN/ws-ctl" >"$out" 2>&1 7>&- &
    fi
    WS_LOAD_PID=$!
    STARTED+=("$WS_LOAD_PID")
}

# ws_load_do OUT COMMAND REPLY SECS: sends COMMAND, waits for its REPLY line.
ws_load_do() {
    local out=$1 cmd=$2 reply=$3 secs=$4
    echo "$cmd" >&7
    wait_line "$out" "^$reply" "$secs" || die "ws.py load did not answer '$cmd' (see $out)"
}

ws_load_stop() {
    echo quit >&7 || true
    stop "$WS_LOAD_PID"
    WS_LOAD_PID=
    exec 7>&-
}

# One tunnel's round trips, in a process of its own; prints its PROBE line.
ws_probe() {
    pin "$GEN_CPUS" timeout 120 python3 "$BENCH/ws.py" probe 127.0.0.1 "$TARGET_PORT" "$WS_PROBE" |
        grep '^PROBE' || echo "PROBE n=0 errors=1 p50=0 p99=0 p999=0"
}

phase_ws() {
    start_ws_backends
    local round cand before after out
    for ((round = 1; round <= WS_ROUNDS; round++)); do
        for cand in $CANDIDATES; do
            start_candidate "$cand"
            before=$(candidate_pss_kb)
            out=$RUN/ws-$cand-$round.out
            ws_load_start "$out" "$WS_TUNNELS"
            wait_line "$out" '^OPEN' 90 || die "WebSocket tunnels through $cand never opened (see $out)"
            sleep 2
            after=$(candidate_pss_kb)
            parse_kv "$(grep '^OPEN' "$out")"
            local open=$r_open open_errors=$r_errors
            # One tunnel's round trips with the others idle, then busy.
            parse_kv "$(ws_probe)"
            local idle_p50=$r_p50 idle_p99=$r_p99 idle_p999=$r_p999 probe_errors=$r_errors
            ws_load_do "$out" "busy $WS_BUSY_RATE" BUSY 10
            sleep 1
            parse_kv "$(ws_probe)"
            local busy_p50=$r_p50 busy_p99=$r_p99 busy_p999=$r_p999
            probe_errors=$((probe_errors + r_errors))
            ws_load_do "$out" idle IDLE 30
            parse_kv "$(grep '^IDLE' "$out")"
            local busy_errors=$r_errors
            # Every tunnel at once, as fast as they go; the candidate's CPU
            # time meanwhile.
            local t0 t1
            t0=$(candidate_ticks)
            ws_load_do "$out" "burst $WS_MESSAGES" BURST 300
            t1=$(candidate_ticks)
            parse_kv "$(grep '^BURST' "$out")"
            ws_load_stop
            printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
                "$cand" "$round" "$open" "$open_errors" "$before" "$after" \
                "$idle_p50" "$idle_p99" "$idle_p999" "$busy_p50" "$busy_p99" "$busy_p999" \
                "$r_msgs_per_s" "$r_p50" "$r_p99" "$((r_failed + busy_errors))" "$probe_errors" \
                "$r_msgs" "$((t1 - t0))" >>"$WS_TSV"
            log "ws round $round $cand: $open open, Pss $before -> $after kB, 1 tunnel p99 idle ${idle_p99} / busy ${busy_p99} us, burst ${r_msgs_per_s} msgs/s"
            stop_candidate
        done
    done
    if ((WS_SCALE_TUNNELS > 0)); then ws_scale; fi
    stop_backends
}

# The scale step: WS_SCALE_TUNNELS tunnels at once through each candidate,
# each echoing WS_SCALE_MESSAGES messages; memory with all of them open.
ws_scale() {
    local cand before after rss_before rss_after out
    for cand in $CANDIDATES; do
        start_candidate "$cand"
        before=$(candidate_pss_kb)
        rss_before=$(candidate_rss_kb)
        out=$RUN/ws-scale-$cand.out
        ws_load_start "$out" "$WS_SCALE_TUNNELS"
        wait_line "$out" '^OPEN' 300 || die "scale step: tunnels through $cand never opened (see $out)"
        sleep 2
        after=$(candidate_pss_kb)
        rss_after=$(candidate_rss_kb)
        parse_kv "$(grep '^OPEN' "$out")"
        local open=$r_open open_errors=$r_errors
        ws_load_do "$out" "burst $WS_SCALE_MESSAGES" BURST 300
        parse_kv "$(grep '^BURST' "$out")"
        ws_load_stop
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cand" "$open" "$open_errors" \
            "$r_failed" "$before" "$after" "$rss_before" "$rss_after" "$r_msgs" "$r_msgs_per_s" >>"$WS_SCALE_TSV"
        log "ws scale $cand: $open open, $open_errors open errors, $r_failed failed, RSS $rss_before -> $rss_after kB"
        stop_candidate
    done
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
OUT=${RESULTS:-$BENCH/results-$(date +%F)$suffix.md}
cmd="bench/run.sh $*"
python3 "$BENCH/report.py" \
    --http "$HTTP_TSV" --idle "$IDLE_TSV" --ws "$WS_TSV" --ws-scale "$WS_SCALE_TSV" \
    --command "${cmd% }" --rounds "$ROUNDS" --duration "$DURATION" --warmup "$WARMUP" \
    --idle-conns "$IDLE_CONNS" --ws-tunnels "$WS_TUNNELS" --ws-messages "$WS_MESSAGES" \
    --ws-rounds "$WS_ROUNDS" --ws-probe "$WS_PROBE" --ws-busy-rate "$WS_BUSY_RATE" \
    --ws-scale-tunnels "$WS_SCALE_TUNNELS" --ws-scale-messages "$WS_SCALE_MESSAGES" \
    --fd-limit "$CANDIDATE_FD_LIMIT" \
    --load-before "$LOAD_BEFORE" --load-after "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --elapsed "$ELAPSED" --hz "$HZ" --pinning "wrk/clients: CPU ${GEN_CPUS:-any}; backends: CPU ${BACKEND_CPUS:-any}; 1-thread candidates: CPU ${LB1_CPUS:-any}; 2-thread candidates: CPUs ${LB2_CPUS:-any}" \
    --hashgate-rev "$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet -- src || echo '+dirty')" \
    >"$OUT"
cat "$OUT"
log "written to $OUT (raw data in $RUN)"
