#!/usr/bin/env bash
# Gateway dispatches per second and latency: wrk -> balancer -> API replica
# -> worker on a private MariaDB, every request metered (a usage_log row
# each), against the same load sent straight to a worker.
#
#   bench/gateway.sh            three rounds of 10 s per path
#   bench/gateway.sh --quick    one round of 4 s
#
# Environment: ROUNDS (3), DURATION (10), WARMUP (2), CONNS (64), THREADS (2),
# WORKERS (2), GEN_CPUS (1; empty = not pinned), DB_PORT (13020).
# Ports: 13003 (balancer), 13004 (replica), 5001.. (workers), DB_PORT.
# Prints a Markdown table; everything it starts is stopped on exit.
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
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-4} WARMUP=${WARMUP:-1}
else
    ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2}
fi
CONNS=${CONNS:-64} THREADS=${THREADS:-2} WORKERS=${WORKERS:-2} DB_PORT=${DB_PORT:-13020}
API_PORT=13004
WORKER_PORTS=()
for ((i = 0; i < WORKERS; i++)); do WORKER_PORTS+=($((5001 + i))); done

trap cleanup EXIT
trap 'exit 130' INT TERM

command -v wrk >/dev/null || die "wrk is not installed (Debian package wrk; bench/run.sh installs it)"
command -v mariadbd >/dev/null || die "mariadbd is not installed (Debian package mariadb-server)"
for p in "$LB_PORT" "$API_PORT" "$DB_PORT" "${WORKER_PORTS[@]}"; do
    ! ss -Htln "sport = :$p" | grep -q . || die "port $p is in use"
done
raise_fd_limit
make_run_dir
log "run directory $RUN"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log "building hashgate (release)"
(cd "$ROOT" && cargo build --release --quiet --bin balancer --bin api --bin worker)
BIN=$ROOT/target/release

# --- a private MariaDB -------------------------------------------------------
log "starting MariaDB on $DB_PORT"
as_root_flag=()
(($(id -u) == 0)) && as_root_flag=(--user=root)
mariadb-install-db --no-defaults --datadir="$RUN/db" --tmpdir="$RUN/tmp" \
    --auth-root-authentication-method=normal --skip-test-db "${as_root_flag[@]}" >"$RUN/db-install.log" 2>&1 ||
    die "mariadb-install-db failed (see $RUN/db-install.log)"
bg "$RUN/mariadb.out" "" mariadbd --no-defaults --datadir="$RUN/db" --socket="$RUN/db.sock" \
    --tmpdir="$RUN/tmp" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --innodb-buffer-pool-size=128M --max-connections=500 --log-error="$RUN/mariadb.err" "${as_root_flag[@]}"
for ((i = 0; i < 300; i++)); do
    mariadb --no-defaults --socket="$RUN/db.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
sql() { mariadb --no-defaults --socket="$RUN/db.sock" -uroot --batch --skip-column-names -e "$1"; }
# A placeholder password for a throw-away server on loopback.
sql "CREATE USER 'hashgate'@'%' IDENTIFIED BY 'bench-placeholder-pw'; GRANT ALL ON *.* TO 'hashgate'@'%';"
export DATABASE_URL="mysql://hashgate:bench-placeholder-pw@127.0.0.1:$DB_PORT/kiro_api"
export RUST_LOG=warn NO_COLOR=1

# --- replica, balancer, workers ----------------------------------------------
bg "$RUN/api.out" "" env PORT=$API_PORT API_HOST=127.0.0.1 "$BIN/api"
wait_http "$API_PORT" /health || die "the replica did not come up (see $RUN/api.out)"
bg "$RUN/balancer.out" "" env BALANCER_HOST=127.0.0.1 BALANCER_PORT="$LB_PORT" \
    BACKEND_HOSTS="127.0.0.1:$API_PORT" HEALTH_INTERVAL_SECS=2 WORKER_THREADS=1 "$BIN/balancer"
wait_http "$LB_PORT" /health || die "the balancer did not come up"
for p in "${WORKER_PORTS[@]}"; do
    bg "$RUN/worker-$p.out" "" "$BIN/worker" --type render --port "$p" --listen-host 127.0.0.1 \
        --master "http://127.0.0.1:$LB_PORT" --work-ms 0 --concurrency 256 --work-bytes 256
done
for ((i = 0; i < 100; i++)); do
    n=$(sql "SELECT COUNT(*) FROM kiro_api.worker_nodes WHERE status='online'" 2>/dev/null || echo 0)
    [[ $n == "$WORKERS" ]] && break
    sleep 0.1
done
[[ $n == "$WORKERS" ]] || die "the workers did not register"
HG_KEY=$("$BIN/api" keys create --name "bench-$(date +%s)" 2>/dev/null)
export HG_KEY
sleep 1.5 # one registry refresh

# wrk_at PORT PATH SECS: one run, its RESULT line.
wrk_at() {
    pin "$GEN_CPUS" timeout $(($3 + 15)) \
        wrk -t"$THREADS" -c"$CONNS" -d"$3s" --timeout 5s -s "$BENCH/gateway.lua" \
        "http://127.0.0.1:$1$2" | grep '^RESULT'
}

rows() { sql "SELECT COUNT(*) FROM kiro_api.usage_log"; }
TSV=$RUN/gateway.tsv
: >"$TSV"
for ((round = 1; round <= ROUNDS; round++)); do
    for path in direct gateway; do
        if [[ $path == direct ]]; then port=${WORKER_PORTS[0]} url=/render; else port=$LB_PORT url=/api/v1/render; fi
        wrk_at "$port" "$url" "$WARMUP" >/dev/null
        before=$(rows)
        line=$(wrk_at "$port" "$url" "$DURATION")
        sleep 1
        after=$(rows)
        echo -e "$path\t$round\t$line\t$((after - before))" >>"$TSV"
        log "round $round $path: $line rows=$((after - before))"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$TSV" "$LOAD_BEFORE" "$LOAD_AFTER" "$CONNS" "$THREADS" "$WORKERS" <<'PY'
import statistics, sys
tsv, before, after, conns, threads, workers = sys.argv[1:]
runs = {}
for line in open(tsv):
    path, rnd, result, rows = line.rstrip("\n").split("\t")
    kv = dict(f.split("=") for f in result.split()[1:])
    kv = {k: int(v) for k, v in kv.items()}
    kv["rows"] = int(rows)
    runs.setdefault(path, []).append(kv)
print(f"wrk -t{threads} -c{conns}, {workers} workers (no simulated work, 256-byte answers), "
      f"one replica, MariaDB; load average {before} before, {after} after\n")
print("| path | dispatches/s (median) | min-max | p50 ms | p99 ms | non-2xx + errors | usage rows / requests |")
print("|---|--:|--:|--:|--:|--:|--:|")
for path in ("direct", "gateway"):
    rs = runs.get(path, [])
    if not rs:
        continue
    rates = [r["requests"] / (r["duration_us"] / 1e6) for r in rs]
    med = statistics.median(rates)
    mid = sorted(rs, key=lambda r: r["requests"] / r["duration_us"])[len(rs) // 2]
    errs = sum(r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"] for r in rs)
    label = "straight to a worker" if path == "direct" else "balancer -> replica -> worker"
    rows = "-" if path == "direct" else f'{sum(r["rows"] for r in rs)} / {sum(r["requests"] for r in rs)}'
    print(f"| {label} | {med:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | {mid['p50']/1000:.2f} | "
          f"{mid['p99']/1000:.2f} | {errs} | {rows} |")
PY
log "done; logs in $RUN"
