#!/usr/bin/env bash
# End-to-end test on a kind cluster: the README's Kubernetes path, with assertions.
#
#   kind cluster (kind-config.yaml) → images built and loaded → crds/ and deploy/
#   applied → `kubectl get sp` shows 3/3 → /home and /rep through the Service →
#   kubectl scale to 5 → /add and /rm edit the ServerPool spec (admin token from the
#   Secret) → a deleted pod comes back under its name → a replica whose heartbeats
#   fail (its process frozen) is replaced by an emergency-<n> pod → scale to 3.
#
# Needs docker, kind, kubectl and curl. Creates the cluster if it does not exist and
# deletes it at the end if it created it (KEEP_CLUSTER=1 keeps it); an existing
# cluster is kept, only what this script applied is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-ringlb}
LOCAL_PORT=${LOCAL_PORT:-15000}
RINGLB_IMAGE=ringlb:dev
REPLICA_IMAGE=ringlb-replica:dev
CTX="kind-$CLUSTER"

for tool in docker kind kubectl curl; do
    command -v "$tool" >/dev/null || {
        echo "e2e: $tool is required (see README, Kubernetes)" >&2
        exit 2
    }
done

k() { kubectl --context "$CTX" "$@"; }
step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "e2e FAILED: $*" >&2
    k get sp,pods -o wide >&2 || true
    k describe sp demo >&2 || true
    k logs deploy/ringlb --tail=80 >&2 || true
    exit 1
}

# Retries `check` (a shell snippet) once a second until it succeeds or `seconds` pass.
wait_until() {
    local seconds=$1 what=$2 check=$3
    for _ in $(seq 1 "$seconds"); do
        if eval "$check" >/dev/null 2>&1; then
            echo "ok: $what"
            return 0
        fi
        sleep 1
    done
    fail "timed out after ${seconds}s waiting for: $what"
}

created_cluster=false
port_forward_pid=
cleanup() {
    set +e
    [ -n "$port_forward_pid" ] && kill "$port_forward_pid" 2>/dev/null
    if $created_cluster && [ -z "${KEEP_CLUSTER:-}" ]; then
        kind delete cluster --name "$CLUSTER"
    else
        k delete -k deploy/ --ignore-not-found --wait=true >/dev/null 2>&1
        k delete -f crds/ --ignore-not-found >/dev/null 2>&1
    fi
}
trap cleanup EXIT

step "cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 180s
    created_cluster=true
fi

step "images"
bash scripts/build-images.sh
kind load docker-image "$RINGLB_IMAGE" "$REPLICA_IMAGE" --name "$CLUSTER"

step "kubectl apply -f crds/ -k deploy/"
k apply -f crds/
k wait --for condition=established crd/serverpools.ringlb.dev --timeout=60s
k apply -k deploy/
k rollout status deploy/ringlb --timeout=180s
sp_field() { k get sp demo -o "jsonpath={$1}"; }
wait_until 120 "3 replicas ready" '[ "$(sp_field .status.readyReplicas)" = 3 ]'
k get sp
header=$(k get sp | head -n1)
[[ $header == *DESIRED*READY*AGE* ]] || fail "printer columns: $header"
k get sp demo --no-headers | grep -Eq '^demo +3 +3 ' || fail "kubectl get sp does not show 3/3"

step "kubectl port-forward svc/ringlb $LOCAL_PORT:5000"
k port-forward svc/ringlb "$LOCAL_PORT:5000" >/dev/null 2>&1 &
port_forward_pid=$!
LB="http://127.0.0.1:$LOCAL_PORT"
wait_until 30 "port-forward answers" "curl -fsS $LB/rep"
home=$(curl -fsS "$LB/home")
echo "GET /home -> $home"
[[ $home =~ Hello\ from\ Server:\ Server[123] ]] || fail "unexpected /home: $home"
rep() { curl -fsS "$LB/rep"; }
[[ $(rep) == *'"N":3'* ]] || fail "/rep: $(rep)"

step "kubectl scale sp/demo --replicas=5"
k scale sp/demo --replicas=5
wait_until 120 "5 replicas ready" '[ "$(sp_field .status.readyReplicas)" = 5 ]'
k get pod server4 server5 >/dev/null || fail "pods server4 and server5 missing"
wait_until 30 "/rep lists 5" '[[ $(rep) == *"\"N\":5"* ]]'
# Every pod of the pool carries its owner and its logical name.
owner=$(k get pod server4 -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')
[ "$owner" = ServerPool/demo ] || fail "server4 owner: $owner"
[ "$(k get pod server4 -o jsonpath='{.metadata.labels.ringlb\.dev/member}')" = Server4 ] ||
    fail "server4 member label"

step "/add and /rm edit the ServerPool spec"
token=$(k get secret ringlb-admin -o jsonpath='{.data.token}' | base64 -d)
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$LB/add" \
    -H 'Content-Type: application/json' -d '{"n": 1, "hostnames": ["web1"]}')
[ "$code" = 401 ] || fail "/add without the token answered $code, expected 401"
added=$(curl -fsS -X POST "$LB/add" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"n": 1, "hostnames": ["web1"]}')
echo "POST /add -> $added"
[[ $added == *'"N":6'* && $added == *web1* ]] || fail "/add: $added"
[ "$(sp_field .spec.replicas)" = 6 ] || fail "spec.replicas after /add: $(sp_field .spec.replicas)"
[[ $(sp_field .spec.hostnames) == *web1* ]] || fail "spec.hostnames after /add"
wait_until 120 "pod web1 ready, 6 replicas" '[ "$(sp_field .status.readyReplicas)" = 6 ]'
removed=$(curl -fsS -X DELETE "$LB/rm" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"n": 1, "hostnames": ["web1"]}')
echo "DELETE /rm -> $removed"
[[ $removed == *'"N":5'* && $removed != *web1* ]] || fail "/rm: $removed"
[ "$(sp_field .spec.replicas)" = 5 ] || fail "spec.replicas after /rm"
wait_until 60 "pod web1 gone" '! k get pod web1'
bad=$(curl -s -X POST "$LB/add" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"n": 1, "hostnames": ["Server1"]}')
[[ $bad == *'already in use'* ]] || fail "/add of a name in use: $bad"

step "kubectl delete pod server2: created again under its name"
old_uid=$(k get pod server2 -o jsonpath='{.metadata.uid}')
k delete pod server2 --wait=true
wait_until 120 "server2 back with a new uid" \
    '[ -n "$(k get pod server2 -o jsonpath={.metadata.uid})" ] && [ "$(k get pod server2 -o jsonpath={.metadata.uid})" != "$old_uid" ]'
wait_until 120 "5 replicas ready again" '[ "$(sp_field .status.readyReplicas)" = 5 ]'

step "server3's heartbeats fail (process frozen): replaced by emergency-1"
node="$CLUSTER-control-plane"
container=$(docker exec "$node" crictl ps -q --name replica \
    --label io.kubernetes.pod.name=server3 --label io.kubernetes.pod.namespace=default)
[ -n "$container" ] || fail "no container for server3 on $node"
pid=$(docker exec "$node" crictl inspect --output go-template --template '{{.info.pid}}' "$container")
docker exec "$node" kill -STOP "$pid"
wait_until 120 "pod emergency-1 exists" 'k get pod emergency-1'
wait_until 60 "pod server3 gone" '! k get pod server3'
wait_until 120 "5 replicas ready with the emergency one" '[ "$(sp_field .status.readyReplicas)" = 5 ]'
[ "$(sp_field '.status.emergencyReplacements[0].failed')" = Server3 ] || fail "replacement not recorded"
[ "$(sp_field '.status.emergencyReplacements[0].replacement')" = emergency_1 ] ||
    fail "replacement name"
[ "$(k get pod emergency-1 -o jsonpath='{.metadata.labels.ringlb\.dev/member}')" = emergency_1 ] ||
    fail "emergency-1 member label"
wait_until 30 "/rep lists emergency_1, not Server3" \
    '[[ $(rep) == *emergency_1* && $(rep) != *Server3* ]]'
k get events --field-selector reason=Replaced -o name | grep -q . || fail "no Replaced event"
k get pods -l ringlb.dev/pool=demo

step "requests keep being served"
for i in $(seq 1 50); do
    curl -fsS "$LB/home" | grep -Eq 'Hello from Server: (Server[1245]|emergency_1)' ||
        fail "request $i was not served by a pool member"
done
echo "ok: 50 requests"

step "kubectl scale sp/demo --replicas=3"
k scale sp/demo --replicas=3
wait_until 120 "3 pods" '[ "$(k get pods -l ringlb.dev/pool=demo --no-headers | grep -vc Terminating)" = 3 ]'
wait_until 60 "3 replicas ready" '[ "$(sp_field .status.readyReplicas)" = 3 ]'
k get sp

echo
echo "e2e passed"
