#!/usr/bin/env bash
# The compose test: brings docker-compose.scale.yml and docker-compose.cluster.yml
# up for real and checks what a user would check. Run as root (or with sudo):
#
#   tests/compose/run.sh
#
# It installs what is missing (docker.io, docker-compose, mariadb-server,
# curl, python3), starts dockerd when no daemon answers, runs MariaDB on the
# host for the replicas, builds the image with docker/build.sh (cargo on the
# host, no registry needed), and tears all of it down on exit, also on
# failure. Traffic goes only to loopback and to the containers it created.
#
# Variables: HASHGATE_PROFILE (cargo profile for the image, default release),
# KEEP_IMAGE=1 (keep the built image for a faster next run).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=tests/compose/lib.sh
source "$ROOT/tests/compose/lib.sh"
cd "$ROOT" || exit 1

WORK="$(mktemp -d /tmp/hashgate-compose.XXXXXX)"
RUN_ID="$$"
IMAGE="hashgate:compose-test-$RUN_ID"
PORT_SCALE=""   # free loopback ports, picked once python3 is installed
PORT_CLUSTER=""
# One function per project: own -p name (the two files never share
# containers), own published port on loopback, the test's env file.
scale() {
    HASHGATE_PUBLISH="127.0.0.1:$PORT_SCALE" docker-compose -p "hgscale$RUN_ID" \
        -f docker-compose.scale.yml --env-file "$WORK/compose.env" "$@"
}
cluster() {
    HASHGATE_PUBLISH="127.0.0.1:$PORT_CLUSTER" docker-compose -p "hgcluster$RUN_ID" \
        -f docker-compose.cluster.yml --env-file "$WORK/compose.env" "$@"
}
PROJECTS_UP=()
IMAGE_BUILT=0
LOAD_PID=""
TEST_START=$(now_ms)

dump_state() {
    local p
    tail -40 "$WORK/compose.log" >&2 2>/dev/null
    for p in "${PROJECTS_UP[@]}"; do
        "$p" ps >&2 2>/dev/null
        "$p" logs --no-color --tail=30 >&2 2>/dev/null
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    phase_end
    [[ -n "$LOAD_PID" ]] && kill "$LOAD_PID" 2>/dev/null
    [[ $rc -ne 0 ]] && dump_state
    log "teardown"
    local p
    for p in "${PROJECTS_UP[@]}"; do
        "$p" down -v --remove-orphans -t 10 >/dev/null 2>&1 || log "down of $p failed"
    done
    teardown_common "$rc"
    exit "$rc"
}
trap_cleanup

# ---- set-up -----------------------------------------------------------------
phase "packages"
ensure_packages

phase "dockerd"
ensure_dockerd
GATEWAY=$(docker0_address) || exit 1
log "host-gateway is $GATEWAY"

phase "mariadb"
DB_PORT=$(free_port)
PORT_SCALE=$(free_port)
PORT_CLUSTER=$(free_port)
start_mariadb "$GATEWAY" "$DB_PORT"

phase "build image"
HASHGATE_IMAGE="$IMAGE" "$ROOT/docker/build.sh" >"$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log" >&2; die "docker/build.sh failed"; }
IMAGE_BUILT=1
# The probe must run in the shell-less image; nothing listens, so it says so.
probe=$(docker run --rm "$IMAGE" /balancer healthcheck 2>&1)
[[ "$probe" == *"unhealthy: cannot connect"* ]] || die "the image cannot run /balancer healthcheck: $probe"
for b in api cluster; do
    docker run --rm "$IMAGE" "/$b" --help >/dev/null 2>&1 || die "the image cannot run /$b"
done
[[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" == 65532:65532 ]] || die "the image runs as root"

# Short intervals so the test waits seconds, not minutes; everything else is
# the files' defaults. Only compose reads this file (--env-file).
cat >"$WORK/compose.env" <<EOF
HASHGATE_IMAGE=$IMAGE
MYSQL_HOST=host.docker.internal
MYSQL_PORT=$DB_PORT
MYSQL_USER=$MARIADB_USER
MYSQL_PASSWORD=$MARIADB_PASSWORD
MYSQL_DATABASE=$MARIADB_DATABASE
DNS_REFRESH_SECS=3
HEALTH_INTERVAL_SECS=2
EOF
# Seconds for the balancer to show a new set: the first `up` includes
# start-up and migrations; after a scale change it is one DNS refresh (3 s)
# plus HEALTH_RISE (2) probes 2 s apart, with room for a loaded machine.
WAIT_UP=60
WAIT_SCALE=20

# A request every 0.1 s from one client while the replica set changes; every
# one must succeed (failover to the key's next backend, retried connects).
start_load() {
    (while :; do
        curl -s --max-time 10 -o /dev/null -w '%{http_code}\n' "$LB/api/client-ip"
        sleep 0.1
    done) >"$WORK/load.txt" 2>/dev/null &
    LOAD_PID=$!
}
check_load() {
    sleep 2
    kill "$LOAD_PID" 2>/dev/null
    wait "$LOAD_PID" 2>/dev/null
    LOAD_PID=""
    local total bad
    total=$(wc -l <"$WORK/load.txt")
    bad=$(grep -vc '^200$' "$WORK/load.txt")
    ((total > 10)) || die "the load loop sent only $total requests"
    [[ $bad -eq 0 ]] || die "$bad of $total requests failed while $1: $(sort "$WORK/load.txt" | uniq -c | tr '\n' ' ')"
    log "$total requests while $1, all 200"
}

# ---- scale file ---------------------------------------------------------------
LB="http://127.0.0.1:$PORT_SCALE"
phase "scale: up --scale api=10"
PROJECTS_UP+=(scale)
scale up -d --no-build --scale api=10 >>"$WORK/compose.log" 2>&1 ||
    die "up --scale api=10 failed"
wait_backends "$LB" 10 "$WAIT_UP"
BALANCER_ID=$(scale ps -q balancer)

phase "scale: sticky client"
ids=$(for _ in $(seq 20); do
    curl -fsS --max-time 5 -o /dev/null -D - "$LB/api/client-ip" |
        tr -d '\r' | sed -n 's/^[Xx]-[Ii]nstance-[Ii]d: //p'
done)
[[ $(wc -l <<<"$ids") -eq 20 ]] || die "not every request answered with X-Instance-Id: $ids"
[[ $(sort -u <<<"$ids" | wc -l) -eq 1 ]] || die "one client saw several instances: $(sort -u <<<"$ids" | tr '\n' ' ')"
log "20 requests, all answered by $(head -1 <<<"$ids")"

phase "scale: shared database"
WORKER="compose-test-$RUN_ID"
curl -fsS --max-time 10 -H 'Content-Type: application/json' \
    -d "{\"name\":\"$WORKER\",\"host\":\"127.0.0.1\",\"port\":9,\"serviceType\":\"render\",\"weight\":1}" \
    "$LB/api/v1/worker/register" >"$WORK/register.json" ||
    die "registering a worker through the balancer failed"
seen=0
for c in $(scale ps -q api); do
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")
    curl -fsS --max-time 5 "http://$ip:13004/api/v1/workers" | grep -q "\"$WORKER\"" ||
        die "replica $ip does not list worker $WORKER"
    seen=$((seen + 1))
done
[[ $seen -eq 10 ]] || die "expected 10 replicas, asked $seen"
log "all $seen replicas list $WORKER"

phase "scale: down to 3 --no-recreate under load"
start_load
scale up -d --no-build --scale api=3 --no-recreate >>"$WORK/compose.log" 2>&1 ||
    die "up --scale api=3 failed"
wait_backends "$LB" 3 "$WAIT_SCALE"
check_load "scaling down"
[[ "$(scale ps -q balancer)" == "$BALANCER_ID" ]] || die "the balancer container was recreated"

phase "scale: back up to 6 under load"
start_load
scale up -d --no-build --scale api=6 --no-recreate >>"$WORK/compose.log" 2>&1 ||
    die "up --scale api=6 failed"
wait_backends "$LB" 6 "$WAIT_SCALE"
check_load "scaling up"
[[ "$(scale ps -q balancer)" == "$BALANCER_ID" ]] || die "the balancer container was recreated"

phase "scale: graceful stop of the balancer"
t0=$(now_ms)
scale stop balancer >/dev/null 2>&1 || die "stop balancer failed"
stop_ms=$(($(now_ms) - t0))
code=$(docker inspect -f '{{.State.ExitCode}}' "$BALANCER_ID")
log "docker-compose stop balancer took ${stop_ms} ms, exit code $code"
((stop_ms < 5000)) || die "stopping the balancer took ${stop_ms} ms (kill timeout is 10 s)"
[[ "$code" == 0 ]] || die "the balancer exited with $code after SIGTERM (137 = killed)"

phase "scale: down"
scale down -v --remove-orphans -t 10 >/dev/null 2>&1 || die "down failed"
PROJECTS_UP=()

# ---- cluster file -------------------------------------------------------------
LB="http://127.0.0.1:$PORT_CLUSTER"
phase "cluster: up"
PROJECTS_UP+=(cluster)
cluster up -d --no-build >>"$WORK/compose.log" 2>&1 || die "cluster up failed"
wait_backends "$LB" 5 "$WAIT_UP"
names=$(json_get "$LB/lb/status" '" ".join(sorted(b["name"] for b in d["backends"]))')
[[ "$names" == "api-1:13004 api-2:13004 api-3:13004 api-4:13004 api-5:13004" ]] ||
    die "unexpected backend names: $names"
curl -fsS --max-time 5 "$LB/health" >/dev/null || die "/health is not 200"
page=$(curl -fsS --max-time 5 "$LB/lb") && [[ "$page" == *"<html"* ]] || die "/lb is not an HTML page"
curl -fsS --max-time 5 "$LB/status.html" >/dev/null || die "/status.html through the balancer failed"

phase "cluster: Docker health checks"
# The compose health checks run `/<binary> healthcheck` inside the shell-less
# image; Docker runs the first one an interval (10 s) after start.
wait_docker_healthy cluster 6 40

phase "cluster: stop all"
t0=$(now_ms)
cluster stop >/dev/null 2>&1 || die "cluster stop failed"
log "docker-compose stop of all six containers took $(($(now_ms) - t0)) ms"

phase "cluster: down"
cluster down -v --remove-orphans -t 10 >/dev/null 2>&1 || die "cluster down failed"
PROJECTS_UP=()
phase_end
log "all checks passed"
