#!/usr/bin/env bash
# Regression guard for the per-request path: counts the instructions of
# `request_path` (client key + key_hash + ring pick + header rewrite, see
# benches/request_path.rs) under callgrind and fails when the count per
# request is more than twice the baseline recorded in bench/BASELINE.md.
#
#   bench/guard.sh              check (builds the bench binary if needed)
#   bench/guard.sh --print      only print the current figure
#
# Instruction counts are reproducible where timings are not, so this can run
# in CI on a shared machine; it takes a few seconds once the binary is built.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
LOOPS=1000 # per case; the workload has two cases
FACTOR=2

command -v valgrind >/dev/null || {
    (($(id -u) == 0)) || sudo=sudo
    ${sudo:-} apt-get update && DEBIAN_FRONTEND=noninteractive ${sudo:-} apt-get install -y valgrind
}

exe=$(cd "$ROOT" && cargo bench --bench request_path --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*/deps/request_path-[^"]*"' | tail -1 | cut -d'"' -f4)
[[ -x $exe ]] || { echo "guard: could not build the request_path bench" >&2; exit 1; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
HASHGATE_PATH_LOOPS=$LOOPS valgrind --tool=callgrind --callgrind-out-file="$out" \
    --toggle-collect='*request_path::request_path*' "$exe" >/dev/null 2>"$out.log" || {
    cat "$out.log" >&2
    exit 1
}
total=$(awk '/Collected :/ { print $NF }' "$out.log")
rm -f "$out.log"
per=$((total / (2 * LOOPS)))
baseline=$(awk -F': *' '/^instructions per request:/ { gsub(/[^0-9]/, "", $2); print $2 }' "$BENCH/BASELINE.md")
echo "request_path: $per instructions per request (baseline ${baseline:-none}, limit ${FACTOR}x)"
[[ ${1:-} == --print ]] && exit 0
[[ -n $baseline ]] || { echo "guard: no baseline in bench/BASELINE.md" >&2; exit 1; }
if ((per > FACTOR * baseline)); then
    echo "guard: the per-request path more than doubled ($per > $FACTOR x $baseline)" >&2
    echo "       profile it: callgrind_annotate on a run of $exe with HASHGATE_PATH_LOOPS=$LOOPS" >&2
    exit 1
fi
