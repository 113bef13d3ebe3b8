#!/usr/bin/env bash
# The Swarm test: deploys deploy/swarm/stack.yml on a single-node Docker Swarm
# for real and checks what an operator would. Run as root (or with sudo):
#
#   tests/swarm/run.sh
#
# 1. `docker swarm init` (no flags) unless this node is already a manager;
#    labels the node `hashgate.balancer=true`; builds the image with
#    docker/build.sh; runs MariaDB on the host, bound to docker0's address
#    (reachable from the tasks, not from outside this machine).
# 2. deploys the stack (HASHGATE_IMAGE = the local image, never looked up in
#    a registry), waits for /lb/status to list the 6 replicas, scales `api`
#    6 -> 3 -> 8 and waits (bounded) until /lb/status shows each set.
# 3. `docker service update --force` on `api` (a rolling restart of all 8
#    tasks, start-first) under a steady GET load from several client
#    addresses: one network namespace per client, each with its own veth
#    pair and address in 10.77.0.0/24, so the balancer keys on distinct
#    addresses (loopback clients would all reach the host-mode port through
#    docker-proxy as one). Every answer must be a 200 naming the client's
#    own address (the balancer keyed on it and forwarded it). Asserts zero
#    failed requests and prints requests, failures and the worst latency.
# Everything it created is removed on exit, also on failure: the stack, the
# namespaces, the database, the image, the label, and the swarm itself if
# this test created it (and dockerd, if it started one).
#
# Variables: HASHGATE_PROFILE (cargo profile for the image, default release),
# KEEP_IMAGE=1 (keep the image), SWARM_IMAGE (deploy this existing image
# instead of building one, e.g. to measure an older build; never removed),
# SWARM_CLIENTS (client namespaces, 4),
# SWARM_CONNECT_TIMEOUT_MS / SWARM_CONNECT_FAILOVER_MS (passed to the
# balancer when set, to compare settings).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=tests/compose/lib.sh
source "$ROOT/tests/compose/lib.sh"
log() { printf '[swarm-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cd "$ROOT" || exit 1

WORK="$(mktemp -d /tmp/hashgate-swarm.XXXXXX)"
RUN_ID="$$"
TAG=$(printf '%x' "$RUN_ID")     # short: interface names hold 15 characters
IMAGE="${SWARM_IMAGE:-hashgate:swarm-test-$RUN_ID}"
STACK="hgswarm$RUN_ID"
CLIENTS="${SWARM_CLIENTS:-4}"
SWARM_CREATED=0
GWBRIDGE_EXISTED=1
LABEL_ADDED=0
NODE_ID=""
STACK_UP=0
IMAGE_BUILT=0
NETNS=()
VETHS=()
LOAD_PIDS=()
TEST_START=$(now_ms)

dump_state() {
    [[ $STACK_UP -eq 1 ]] || return 0
    docker stack ps --no-trunc "$STACK" 2>/dev/null | head -40 >&2
    docker service logs --tail 30 "${STACK}_balancer" >&2 2>/dev/null
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    phase_end
    local p i
    touch "$WORK/stop" 2>/dev/null
    for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    [[ $rc -ne 0 ]] && dump_state
    log "teardown"
    if [[ $STACK_UP -eq 1 ]]; then
        docker stack rm "$STACK" >/dev/null 2>&1 || log "stack rm failed"
        # The network goes once its tasks are gone; wait for both (bounded).
        for i in $(seq 60); do
            [[ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ]] &&
                [[ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ]] && break
            sleep 1
        done
    fi
    for p in "${NETNS[@]}"; do ip netns del "$p" 2>/dev/null; done
    for p in "${VETHS[@]}"; do ip link del "$p" 2>/dev/null; done
    if [[ $LABEL_ADDED -eq 1 && $SWARM_CREATED -eq 0 ]]; then
        docker node update --label-rm hashgate.balancer "$NODE_ID" >/dev/null 2>&1
    fi
    if [[ $SWARM_CREATED -eq 1 ]]; then
        docker swarm leave --force >/dev/null 2>&1 || log "swarm leave failed"
        # The bridge the swarm created for its tasks' way out stays behind.
        # Docker 20.10 may keep a stale ingress endpoint on it until dockerd
        # restarts: then it stays (harmless; reused by the next swarm).
        if [[ $GWBRIDGE_EXISTED -eq 0 ]]; then
            local gone=0
            for i in 1 2 3 4 5; do
                docker network rm docker_gwbridge >/dev/null 2>&1 && { gone=1; break; }
                sleep 1
            done
            [[ $gone -eq 1 ]] || log "docker_gwbridge kept: dockerd still holds an endpoint on it"
        fi
    fi
    teardown_common "$rc"
    exit "$rc"
}
trap_cleanup

# ---- set-up -----------------------------------------------------------------
phase "packages"
ensure_packages

phase "dockerd and swarm"
ensure_dockerd
state=$(docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null)
docker network inspect docker_gwbridge >/dev/null 2>&1 || GWBRIDGE_EXISTED=0
case "$state" in
inactive)
    docker swarm init >"$WORK/swarm-init.log" 2>&1 ||
        { cat "$WORK/swarm-init.log" >&2; die "docker swarm init failed"; }
    SWARM_CREATED=1
    log "swarm: created a single-node swarm (left again on exit)"
    ;;
active)
    [[ "$(docker info -f '{{.Swarm.ControlAvailable}}')" == true ]] ||
        die "this node is in a swarm but not a manager: cannot deploy"
    log "swarm: using the existing swarm (left as it is on exit)"
    ;;
*) die "swarm state is '$state'" ;;
esac
NODE_ID=$(docker info -f '{{.Swarm.NodeID}}')
if [[ "$(docker node inspect -f '{{index .Spec.Labels "hashgate.balancer"}}' "$NODE_ID")" != true ]]; then
    docker node update --label-add hashgate.balancer=true "$NODE_ID" >/dev/null ||
        die "cannot label node $NODE_ID"
    LABEL_ADDED=1
fi
# The database listens on docker0's address: a host address the tasks reach
# (overlay containers leave through docker_gwbridge, and the host answers
# for all its addresses) that is not exposed beyond this machine. In a real
# swarm MYSQL_HOST names a database every node reaches.
GATEWAY=$(docker0_address) || exit 1
log "database address (docker0) is $GATEWAY"

phase "mariadb"
DB_PORT=$(free_port)
LB_PORT=$(free_port)
start_mariadb "$GATEWAY" "$DB_PORT"

phase "client namespaces"
# Namespace i: veth pair, host side 10.77.0.(4i+1)/30, client 10.77.0.(4i+2).
ip route show | grep -q '^10\.77\.0\.' && die "10.77.0.0/24 is already routed here"
CLIENT_IPS=()
GW_IPS=()
for i in $(seq "$CLIENTS"); do
    ns="hgswarm-$TAG-$i" host="hg${TAG}h$i" peer="hg${TAG}n$i"
    gw="10.77.0.$((4 * i + 1))" cl="10.77.0.$((4 * i + 2))"
    ip netns add "$ns" || die "ip netns add $ns failed"
    NETNS+=("$ns")
    ip link add "$host" type veth peer name "$peer" || die "cannot create veth $host"
    VETHS+=("$host")
    ip link set "$peer" netns "$ns" &&
        ip addr add "$gw/30" dev "$host" && ip link set "$host" up &&
        ip -n "$ns" addr add "$cl/30" dev "$peer" && ip -n "$ns" link set "$peer" up &&
        ip -n "$ns" link set lo up || die "cannot configure namespace $ns"
    CLIENT_IPS+=("$cl")
    GW_IPS+=("$gw")
done
log "clients: ${CLIENT_IPS[*]}"
# The balancer as the first namespace's gateway address (a host address, so
# it reaches the host-mode port like any outside client).
LB="http://${GW_IPS[0]}:$LB_PORT"

phase "build image"
if [[ -n "${SWARM_IMAGE:-}" ]]; then
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "SWARM_IMAGE=$IMAGE does not exist"
    log "using the existing image $IMAGE"
else
    HASHGATE_IMAGE="$IMAGE" "$ROOT/docker/build.sh" >"$WORK/build.log" 2>&1 ||
        { tail -40 "$WORK/build.log" >&2; die "docker/build.sh failed"; }
    IMAGE_BUILT=1
fi

# ---- deploy -----------------------------------------------------------------
phase "deploy the stack (api=6)"
export HASHGATE_IMAGE="$IMAGE" HASHGATE_PORT="$LB_PORT"
export MYSQL_HOST="$GATEWAY" MYSQL_PORT="$DB_PORT" MYSQL_USER="$MARIADB_USER"
export MYSQL_PASSWORD="$MARIADB_PASSWORD" MYSQL_DATABASE="$MARIADB_DATABASE"
# The stack's own DNS refresh and health intervals (10 s), as deployed; only
# the API's Docker health check runs every 2 s, so the rolling update (which
# waits for each new task to be healthy) takes a minute, not several.
unset DNS_REFRESH_SECS HEALTH_INTERVAL_SECS TRUSTED_PROXIES API_TRUSTED_PROXIES
export API_HEALTHCHECK_INTERVAL=2s
STACK_FILE=deploy/swarm/stack.yml
extra=""
[[ -n "${SWARM_CONNECT_TIMEOUT_MS:-}" ]] && extra+="      CONNECT_TIMEOUT_MS: \"$SWARM_CONNECT_TIMEOUT_MS\"\n"
[[ -n "${SWARM_CONNECT_FAILOVER_MS:-}" ]] && extra+="      CONNECT_FAILOVER_MS: \"$SWARM_CONNECT_FAILOVER_MS\"\n"
if [[ -n "$extra" ]]; then
    # Only for comparing settings by hand: the balancer's environment plus these.
    STACK_FILE="$WORK/stack.yml"
    awk -v extra="$extra" '{print} /BACKEND_PORT: "13004"/ {printf "%s", extra}' \
        deploy/swarm/stack.yml >"$STACK_FILE"
fi
STACK_UP=1
timeout 120 docker stack deploy --resolve-image never -c "$STACK_FILE" "$STACK" >"$WORK/deploy.log" 2>&1 ||
    { cat "$WORK/deploy.log" >&2; die "docker stack deploy failed"; }
# First start: image, overlay network, migrations, two health probes.
wait_backends "$LB" 6 120

# ---- scaling -------------------------------------------------------------------
for n in 3 8; do
    phase "scale api to $n"
    timeout 60 docker service scale -d "${STACK}_api=$n" >/dev/null 2>&1 ||
        die "docker service scale ${STACK}_api=$n failed"
    # One DNS refresh (10 s), then new tasks start and pass two probes
    # (a down backend is probed every second). Bounded well above that.
    wait_backends "$LB" "$n" 60
done

# ---- rolling restart under load -------------------------------------------------
phase "service update --force under load"
rm -f "$WORK/stop"
for i in "${!NETNS[@]}"; do
    ip netns exec "${NETNS[$i]}" python3 "$ROOT/tests/swarm/load.py" \
        "${GW_IPS[$i]}" "$LB_PORT" "${CLIENT_IPS[$i]}" "$WORK/stop" 400 4 0.05 \
        >"$WORK/load-$i.json" 2>"$WORK/load-$i.err" &
    LOAD_PIDS+=($!)
done
sleep 3 # the load is steady before the update begins
t0=$(now_ms)
timeout 300 docker service update --force --detach=false "${STACK}_api" >"$WORK/update.log" 2>&1 ||
    { tail -20 "$WORK/update.log" >&2; die "docker service update --force failed or took over 300 s"; }
update_secs=$((($(now_ms) - t0) / 1000))
log "update --force of 8 tasks converged in ${update_secs}s"
wait_backends "$LB" 8 60
sleep 3 # and a few seconds of load on the new set
touch "$WORK/stop"
for p in "${LOAD_PIDS[@]}"; do wait "$p"; done
LOAD_PIDS=()

python3 - "$WORK" "$CLIENTS" "$update_secs" <<'PY' || die "requests failed during the rolling update"
import json, sys
work, clients, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = []
for i in range(clients):
    try:
        rows.append(json.load(open("%s/load-%d.json" % (work, i))))
    except Exception as e:
        print("client %d printed no summary (%s): %s" % (i, e, open("%s/load-%d.err" % (work, i)).read()[-500:]))
        sys.exit(1)
req = sum(r["requests"] for r in rows)
fail = sum(r["failures"] for r in rows)
worst = max(r["worst_ms"] for r in rows)
slow = sum(r["slow_over_500ms"] for r in rows)
p99 = max(r["p99_ms"] for r in rows)
for r in rows:
    print("  client %-12s requests %5d failures %d worst %7.1f ms p99 %6.1f ms instances %d%s" % (
        r["client"], r["requests"], r["failures"], r["worst_ms"], r["p99_ms"], len(r["instances"]),
        "".join("\n    " + s for s in r["samples"])))
print("SWARM ROW: update --force of 8 api tasks (%s s) from %d client addresses: "
      "%d requests, %d failed, worst latency %.0f ms (worst client p99 %.0f ms, %d over 500 ms)"
      % (secs, clients, req, fail, worst, p99, slow))
if req < 100 * clients:
    print("too few requests: %d" % req)
    sys.exit(1)
sys.exit(1 if fail else 0)
PY

phase_end
log "all checks passed"
