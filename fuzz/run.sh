#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on any crash:
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      # default 30; e.g. fuzz/run.sh 600
#
# 1. installs cargo-fuzz when it is missing (cargo install --locked);
# 2. builds every target once with the nightly toolchain (cargo-fuzz needs
#    nightly's sanitizer-coverage flags);
# 3. runs each target for SECONDS_PER_TARGET, starting from its committed
#    seeds (fuzz/corpus/<target>, never written to) plus what earlier runs
#    on this machine found (fuzz/target/corpus/<target>, where libFuzzer
#    writes; FUZZ_FRESH=1 empties it first);
# 4. prints, per target, the executions and the coverage reached (libFuzzer's
#    final cov/ft lines and stat::number_of_executed_units), and for a crash
#    the failed property and the reproducer's path (fuzz/artifacts/<target>/).
#
# No nightly toolchain: nothing can be fuzzed. The script says so, replays
# the seeds through the same checks built on stable (cargo test
# --test replay), and passes or fails on the replay's result (a toolchain
# cannot be fetched from a machine that reaches only package registries).
#
# Targets are built without a sanitizer (-s none): hashgate forbids unsafe
# code, so what fuzzing finds here are panics, overflows (debug assertions
# are on) and property failures, and an uninstrumented build runs about
# three times the inputs. FUZZ_SANITIZER=address puts AddressSanitizer back.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
if [[ ! $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi
sanitizer=${FUZZ_SANITIZER:-none}
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

targets=(request_head response_head chunked client_ip config)
declare -A dict=(
    [request_head]=fuzz/dict/http.dict
    [response_head]=fuzz/dict/http.dict
    [chunked]=fuzz/dict/chunked.dict
    [client_ip]=fuzz/dict/client_ip.dict
    [config]=fuzz/dict/config.dict
)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: NO NIGHTLY TOOLCHAIN: nothing is fuzzed on this machine."
    echo "fuzz: install it with: rustup toolchain install nightly --profile minimal"
    echo "fuzz: replaying the seed corpus through the checks built on stable instead"
    echo "fuzz: (this finds nothing new: no coverage feedback, no mutation)"
    replay=0
    cargo test --manifest-path fuzz/Cargo.toml --test replay </dev/null || replay=$?
    if [[ $replay -ne 0 ]]; then
        echo "fuzz: the seed replay FAILED"
        exit "$replay"
    fi
    # Not a failure even under CI: a toolchain cannot be fetched on a
    # machine that reaches only the package registries, and a missing
    # nightly says nothing about the product. The lines above say loudly
    # that nothing was fuzzed.
    echo "fuzz: seeds pass; NOT fuzzed (no nightly)"
    exit 0
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked </dev/null
fi

t0=$(date +%s)
echo "fuzz: building ${#targets[@]} targets ($(cargo +nightly --version), sanitizer $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer" </dev/null
echo "fuzz: built in $(($(date +%s) - t0)) s; ${seconds} s per target"

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
    work=fuzz/target/corpus/$t
    [[ ${FUZZ_FRESH:-} == 1 ]] && rm -rf "$work"
    mkdir -p "$work"
    log=$logs/$t.log
    echo
    echo "=== fuzz $t (${seconds} s)"
    rc=0
    cargo +nightly fuzz run -s "$sanitizer" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -dict="${dict[$t]}" </dev/null >"$log" 2>&1 || rc=$?
    # The last status line (DONE, or where it stood at the crash) and the
    # final statistics.
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$status")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$status")
    corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$status")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    echo "${status:-(no status line)}"
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
    line=$(printf '%-14s %12s %9s %7s %7s %8s' "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    if [[ $rc -ne 0 ]]; then
        echo "--- $t FAILED (exit $rc); from its log, $log:"
        if grep -q 'panicked at' "$log"; then
            # The failed property, up to the backtrace.
            sed -n '/panicked at/,/^stack backtrace:/p' "$log" | grep -v '^stack backtrace:' | head -n 30
        else
            # A timeout, out-of-memory or sanitizer report.
            grep -E 'ERROR: libFuzzer|==ERROR|SUMMARY' "$log" || tail -n 30 "$log"
        fi
        artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
        grep -E '^Base64:' "$log" | tail -n 1 || true
        if [[ -n $artifact ]]; then
            echo "input: $artifact"
            echo "reproduce: cargo +nightly fuzz run -s $sanitizer $t $artifact"
        fi
        failed+=("$t")
        line+="  FAILED"
    fi
    summary+=("$line")
done

echo
echo "=== fuzz summary: ${seconds} s per target, sanitizer $sanitizer, $(date -u +%Y-%m-%d)"
printf '%-14s %12s %9s %7s %7s %8s\n' target executions "execs/s" cov ft corpus
printf '%s\n' "${summary[@]}"
echo "=== fuzz finished in $(($(date +%s) - t0)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
