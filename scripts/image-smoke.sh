#!/usr/bin/env bash
# Container smoke test of the two images (build them first: `just image`).
#
# 1. the replica image answers GET /home (with its SERVER_ID) and GET /heartbeat;
# 2. the ringlb image starts (`--help`, `crd`), then runs `up --replica` in front of
#    the replica container and routes /home to it; /rep lists it.
# Ports are published on 127.0.0.1 only. Everything started is removed on exit.
set -euo pipefail

RINGLB_IMAGE=${RINGLB_IMAGE:-ringlb:dev}
REPLICA_IMAGE=${REPLICA_IMAGE:-ringlb-replica:dev}
run_id="ringlb-smoke-$$"
network="$run_id"
replica="$run_id-replica"
balancer="$run_id-lb"

cleanup() {
    docker rm -f "$replica" "$balancer" >/dev/null 2>&1 || true
    docker network rm "$network" >/dev/null 2>&1 || true
}
trap cleanup EXIT

fail() {
    echo "image smoke test FAILED: $*" >&2
    for c in "$replica" "$balancer"; do
        if docker inspect "$c" >/dev/null 2>&1; then
            echo "--- logs of $c" >&2
            docker logs "$c" >&2 || true
        fi
    done
    exit 1
}

# Waits until `curl URL` succeeds (at most ~10 s) and prints the body.
wait_get() {
    local url=$1 body
    for _ in $(seq 1 50); do
        if body=$(curl -fsS --max-time 2 "$url" 2>/dev/null); then
            printf '%s' "$body"
            return 0
        fi
        sleep 0.2
    done
    return 1
}

published_port() { # container, container port → host port on 127.0.0.1
    docker port "$1" "$2/tcp" | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' | head -n1
}

for image in "$RINGLB_IMAGE" "$REPLICA_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 ||
        fail "image $image not found: build it with \`just image\`"
done

docker network create "$network" >/dev/null

echo "== replica image: $REPLICA_IMAGE"
docker run -d --name "$replica" --network "$network" -e SERVER_ID=Server1 \
    -p 127.0.0.1::5000 "$REPLICA_IMAGE" >/dev/null
replica_port=$(published_port "$replica" 5000)
[ -n "$replica_port" ] || fail "replica port not published"
home=$(wait_get "http://127.0.0.1:$replica_port/home") || fail "replica /home did not answer"
echo "GET /home      -> $home"
[[ $home == *'Hello from Server: Server1'* ]] || fail "unexpected /home body: $home"
code=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$replica_port/heartbeat")
echo "GET /heartbeat -> $code"
[ "$code" = 200 ] || fail "/heartbeat answered $code"
code=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$replica_port/other")
[ "$code" = 404 ] || fail "/other answered $code, expected 404"

echo "== ringlb image: $RINGLB_IMAGE"
# Outputs are captured whole: `cmd | grep -q` would cut the pipe under pipefail.
help=$(docker run --rm "$RINGLB_IMAGE" --help) || fail "ringlb --help failed"
printf '%s\n' "$help" | sed -n 1p
docker run --rm "$RINGLB_IMAGE" --version
crd=$(docker run --rm "$RINGLB_IMAGE" crd) || fail "ringlb crd failed"
[[ $crd == *$'\nkind: CustomResourceDefinition\n'* ]] || fail "\`ringlb crd\` did not print the CRD"
# The image's default command is the operator; the proxy is its other in-cluster
# command. Outside a cluster both must say why they stop.
if out=$(docker run --rm -e RUST_BACKTRACE=0 "$RINGLB_IMAGE" 2>&1); then
    fail "ringlb operator started without a Kubernetes API"
fi
[[ $out == *'cannot reach the Kubernetes API'* ]] || fail "unexpected operator error: $out"
echo "ringlb operator without a cluster -> $(printf '%s' "$out" | head -n1)"
if out=$(docker run --rm -e RINGLB_POOL=demo -e RUST_BACKTRACE=0 "$RINGLB_IMAGE" proxy 2>&1); then
    fail "ringlb proxy started without a Kubernetes API"
fi
[[ $out == *'cannot reach the Kubernetes API'* ]] || fail "unexpected proxy error: $out"
echo "ringlb proxy without a cluster -> $(printf '%s' "$out" | head -n1)"

replica_ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$replica")
[ -n "$replica_ip" ] || fail "no address for the replica container"
docker run -d --name "$balancer" --network "$network" -p 127.0.0.1::5000 -p 127.0.0.1::5001 \
    "$RINGLB_IMAGE" up --listen 0.0.0.0:5000 --ops-listen 0.0.0.0:5001 \
    --replica "Server1=$replica_ip:5000" >/dev/null
lb_port=$(published_port "$balancer" 5000)
ops_port=$(published_port "$balancer" 5001)
[ -n "$lb_port" ] && [ -n "$ops_port" ] || fail "ringlb ports not published"
wait_get "http://127.0.0.1:$ops_port/readyz" >/dev/null || fail "ringlb never became ready"
home=$(wait_get "http://127.0.0.1:$lb_port/home") || fail "ringlb /home did not answer"
echo "GET /home via ringlb -> $home"
[[ $home == *'Hello from Server: Server1'* ]] || fail "unexpected /home body via ringlb: $home"
rep=$(curl -fsS "http://127.0.0.1:$lb_port/rep")
echo "GET /rep via ringlb  -> $rep"
[[ $rep == *'"replicas":["Server1"]'* ]] || fail "unexpected /rep body: $rep"

# SIGTERM stops it cleanly (exit code 0) within the grace period.
docker stop -t 10 "$balancer" >/dev/null
status=$(docker inspect -f '{{.State.ExitCode}}' "$balancer")
[ "$status" = 0 ] || fail "ringlb exited with $status on SIGTERM"

echo "image smoke test passed"
