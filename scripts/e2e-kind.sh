#!/usr/bin/env bash
# End-to-end test on a kind cluster: the README's Kubernetes path, with assertions.
#
#   kind cluster (kind-config.yaml) → images built and loaded → crds/ and deploy/
#   applied → both Deployments (ringlb-operator, ringlb-proxy) rolled out → `kubectl
#   get sp` shows 3/3 → two proxy pods serve, each on its own → /home and /rep through
#   the Service → kubectl scale to 5 → /add and /rm edit the ServerPool spec (admin
#   token from the Secret) → a deleted pod comes back under its name → a replica whose
#   heartbeats fail (its process frozen) is replaced by an emergency-<n> pod → deleting
#   a proxy pod while a client loop runs loses no request → the leader operator dies,
#   the standby takes over the lease and still replaces a failed replica → scale to 3.
#
# Needs docker, kind, kubectl and curl. Creates the cluster if it does not exist and
# deletes it at the end if it created it (KEEP_CLUSTER=1 keeps it); an existing
# cluster is kept, only what this script applied or created is removed. The step that
# deletes a proxy pod needs the node port that kind-config.yaml publishes (NODE_PORT,
# 30500, on 127.0.0.1): on an existing cluster created without it, that step is
# skipped and the summary says so.
# The snippets given to wait_until are single-quoted on purpose: eval'd at each try.
# shellcheck disable=SC2016,SC2034
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-ringlb}
LOCAL_PORT=${LOCAL_PORT:-15000}
# Must equal the containerPort and hostPort of kind-config.yaml's extraPortMappings.
NODE_PORT=30500
# The NodePort Service of the no-lost-request step: created and deleted by this script.
E2E_SERVICE=ringlb-e2e-nodeport
RINGLB_IMAGE=ringlb:dev
REPLICA_IMAGE=ringlb-replica:dev
CTX="kind-$CLUSTER"
NODE="$CLUSTER-control-plane"
PROXY_PODS=app.kubernetes.io/name=ringlb,app.kubernetes.io/component=proxy
OPERATOR_PODS=app.kubernetes.io/name=ringlb,app.kubernetes.io/component=operator
LEASE=ringlb-operator

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
    k get sp,deploy,pods -o wide >&2 || true
    k describe sp demo >&2 || true
    k get lease "$LEASE" -o yaml >&2 || true
    for component in operator proxy; do
        echo "-- logs of the $component pods" >&2
        k logs -l "app.kubernetes.io/name=ringlb,app.kubernetes.io/component=$component" \
            --prefix --tail=80 >&2 || true
    done
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
loop_pid=
e2e_service_created=false
skipped=()
work=$(mktemp -d)
cleanup() {
    set +e
    [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null
    [ -n "$port_forward_pid" ] && kill "$port_forward_pid" 2>/dev/null
    rm -rf "$work"
    if $created_cluster && [ -z "${KEEP_CLUSTER:-}" ]; then
        kind delete cluster --name "$CLUSTER"
    else
        $e2e_service_created && k delete service "$E2E_SERVICE" --ignore-not-found >/dev/null 2>&1
        k delete -k deploy/ --ignore-not-found --wait=true >/dev/null 2>&1
        # Created by the operators, not by deploy/.
        k delete lease "$LEASE" --ignore-not-found >/dev/null 2>&1
        k delete -f crds/ --ignore-not-found >/dev/null 2>&1
    fi
}
trap cleanup EXIT

# Freezes (SIGSTOP) the process of container `$2` of pod `$1` on the kind node: it
# stops answering without exiting, as a hung process or a lost node would.
freeze() {
    local pod=$1 name=$2 container pid
    container=$(docker exec "$NODE" crictl ps -q --name "^$name\$" \
        --label "io.kubernetes.pod.name=$pod" --label io.kubernetes.pod.namespace=default)
    [ -n "$container" ] || fail "no running container $name for pod $pod on $NODE"
    pid=$(docker exec "$NODE" crictl inspect --output go-template --template '{{.info.pid}}' "$container")
    docker exec "$NODE" kill -STOP "$pid"
    echo "froze $pod/$name (pid $pid on $NODE)"
}

LB="http://127.0.0.1:$LOCAL_PORT"
# (Re)starts `kubectl port-forward svc/ringlb`: it sticks to one proxy pod and ends
# with it, so it is started again after a proxy pod is deleted.
port_forward() {
    if [ -n "$port_forward_pid" ]; then
        kill "$port_forward_pid" 2>/dev/null || true
        wait "$port_forward_pid" 2>/dev/null || true
    fi
    k port-forward svc/ringlb "$LOCAL_PORT:5000" >/dev/null 2>&1 &
    port_forward_pid=$!
    wait_until 30 "port-forward answers" "curl -fsS --max-time 2 $LB/rep"
}

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
# The operators first: the proxies are Ready only once the pool has a ready member.
k rollout status deploy/ringlb-operator --timeout=180s
k rollout status deploy/ringlb-proxy --timeout=180s
sp_field() { k get sp demo -o "jsonpath={$1}"; }
wait_until 120 "3 replicas ready" '[ "$(sp_field .status.readyReplicas)" = 3 ]'
k get sp
header=$(k get sp | head -n1)
[[ $header == *DESIRED*READY*AGE* ]] || fail "printer columns: $header"
k get sp demo --no-headers | grep -Eq '^demo +3 +3 ' || fail "kubectl get sp does not show 3/3"

step "two proxy pods serve"
# Each pod on its own, through the API server's proxy to the pod (no port-forward).
pods_of() { k get pods -l "$1" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
proxies=$(pods_of "$PROXY_PODS")
[ "$(grep -c . <<<"$proxies")" = 2 ] || fail "expected 2 proxy pods, got: $proxies"
first_rep=
for pod in $proxies; do
    ready=$(k get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
    [ "$ready" = True ] || fail "proxy pod $pod is not Ready"
    home=$(k get --raw "/api/v1/namespaces/default/pods/$pod:5000/proxy/home") ||
        fail "proxy pod $pod does not answer /home"
    [[ $home =~ Hello\ from\ Server:\ Server[123] ]] || fail "$pod: unexpected /home: $home"
    pod_rep=$(k get --raw "/api/v1/namespaces/default/pods/$pod:5000/proxy/rep")
    [[ $pod_rep == *'"N":3'* ]] || fail "$pod: /rep: $pod_rep"
    [ -z "$first_rep" ] || [ "$pod_rep" = "$first_rep" ] || fail "the proxies disagree: $first_rep vs $pod_rep"
    first_rep=$pod_rep
    echo "ok: $pod is Ready and answers /home: $home"
done

step "kubectl port-forward svc/ringlb $LOCAL_PORT:5000"
port_forward
home=$(curl -fsS "$LB/home")
echo "GET /home -> $home"
[[ $home =~ Hello\ from\ Server:\ Server[123] ]] || fail "unexpected /home: $home"
rep() { curl -fsS --max-time 5 "$LB/rep"; }
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
freeze server3 replica
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

step "deleting a proxy pod loses no request"
# The client goes through a NodePort Service, as an outside client goes through the
# Service's endpoints: `kubectl port-forward svc/…` picks one pod and dies with it. The
# NodePort Service is the e2e's own (same selector as `ringlb`, deleted at the end), so
# deploy/'s Service stays as shipped.
if ! docker port "$NODE" "$NODE_PORT/tcp" >/dev/null 2>&1; then
    echo "SKIPPED: node $NODE does not publish port $NODE_PORT: cluster $CLUSTER was created" \
        "without kind-config.yaml's extraPortMappings. To cover this step:" \
        "kind delete cluster --name $CLUSTER, then run again."
    skipped+=("deleting a proxy pod loses no request (no node port on $NODE)")
else
    selector=$(k get service ringlb \
        -o go-template='{{range $k, $v := .spec.selector}}{{printf "    %s: %s\n" $k $v}}{{end}}')
    [ -n "$selector" ] || fail "Service ringlb has no selector"
    k apply -f - <<YAML
apiVersion: v1
kind: Service
metadata:
  name: $E2E_SERVICE
  namespace: default
  labels:
    app.kubernetes.io/part-of: ringlb-e2e
spec:
  type: NodePort
  selector:
$selector
  ports:
    - name: http
      port: 5000
      targetPort: http
      nodePort: $NODE_PORT
YAML
    e2e_service_created=true
    NP="http://127.0.0.1:$NODE_PORT"
    wait_until 60 "the node port answers" "curl -fsS --max-time 2 $NP/rep"

    requests=300
    proxies=$(pods_of "$PROXY_PODS")
    victim=$(head -n1 <<<"$proxies")
    results="$work/requests"
    : >"$results"
    # One new connection per request, 2 s at most each, 0.1 s apart: about 30 s, long
    # enough to cover the victim's preStop sleep, drain and replacement.
    (
        for _ in $(seq 1 "$requests"); do
            curl -s -o /dev/null -w '%{http_code}\n' --max-time 2 "$NP/home" || true
            sleep 0.1
        done >"$results"
    ) &
    loop_pid=$!
    wait_until 30 "the client loop is running" '[ "$(wc -l <"$results")" -ge 20 ]'
    echo "deleting proxy pod $victim (default grace period) while the loop runs"
    k delete pod "$victim"
    echo "ok: $victim deleted after $(wc -l <"$results") requests"
    wait "$loop_pid" || true
    loop_pid=
    total=$(($(wc -l <"$results")))
    failed=$(grep -cvx 200 "$results" || true)
    echo "$total requests, $failed failed"
    [ "$total" -eq "$requests" ] || fail "the client loop made $total requests, not $requests"
    [ "$failed" = 0 ] ||
        fail "$failed of $total requests failed while $victim was deleted (codes: $(sort "$results" | uniq -c | tr '\n' ' '))"
    k rollout status deploy/ringlb-proxy --timeout=120s
    proxies=$(pods_of "$PROXY_PODS")
    [ "$(grep -c . <<<"$proxies")" = 2 ] || fail "not 2 proxy pods after the deletion: $proxies"
    ! grep -qx "$victim" <<<"$proxies" || fail "$victim is still there"
    k delete service "$E2E_SERVICE" --wait=true
    e2e_service_created=false
fi
# The port-forward may have been attached to the deleted pod.
port_forward

step "the leader operator pod dies: the standby takes over and still replaces a failed replica"
holder() { k get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}'; }
wait_until 60 "an operator pod holds the lease" \
    '[ -n "$(holder)" ] && grep -qx "$(holder)" <<<"$(pods_of "$OPERATOR_PODS")"'
leader=$(holder)
operators=$(pods_of "$OPERATOR_PODS")
standby=$(grep -vx "$leader" <<<"$operators" | head -n1 || true)
[ -n "$standby" ] || fail "no standby operator pod beside the leader $leader"
duration=$(k get lease "$LEASE" -o jsonpath='{.spec.leaseDurationSeconds}')
echo "leader $leader, standby $standby, lease duration ${duration:-?} s"
# A crash, not a shutdown: frozen first, the leader can neither renew nor release the
# lease (a forced deletion alone still lets the kubelet send SIGTERM, on which the
# leader releases it, and the Deployment's new pod could then take it before the
# standby). Then the pod is deleted at once, as a lost node's would be.
freeze "$leader" ringlb
wait_until $((${duration:-15} + 20)) "the standby $standby holds the lease" '[ "$(holder)" = "$standby" ]'
k delete pod "$leader" --grace-period=0 --force
k rollout status deploy/ringlb-operator --timeout=120s
[ "$(holder)" = "$standby" ] || fail "the lease moved from $standby to $(holder)"
replacement_of() { sp_field ".status.emergencyReplacements[?(@.failed==\"$1\")].replacement"; }
freeze server1 replica
wait_until 120 "Server1 replaced under the new leader" '[ -n "$(replacement_of Server1)" ]'
replacement=$(replacement_of Server1)
replacement_pod=${replacement//_/-}
echo "Server1 -> $replacement (pod $replacement_pod)"
wait_until 120 "pod $replacement_pod exists" "k get pod $replacement_pod"
wait_until 60 "pod server1 gone" '! k get pod server1'
wait_until 120 "5 replicas ready again" '[ "$(sp_field .status.readyReplicas)" = 5 ]'
wait_until 30 "/rep lists $replacement, not Server1" \
    '[[ $(rep) == *"$replacement"* && $(rep) != *Server1* ]]'
# The events.k8s.io view of Events: reason and reporting instance (the pod's name).
reported=$(k get events.events.k8s.io \
    -o jsonpath='{range .items[*]}{.reason} {.reportingInstance}{"\n"}{end}')
grep -qx "Replaced $standby" <<<"$reported" ||
    fail "no Replaced event reported by the new leader $standby"
k get pods -l ringlb.dev/pool=demo

step "kubectl scale sp/demo --replicas=3"
k scale sp/demo --replicas=3
wait_until 120 "3 pods" '[ "$(k get pods -l ringlb.dev/pool=demo --no-headers | grep -vc Terminating)" = 3 ]'
wait_until 60 "3 replicas ready" '[ "$(sp_field .status.readyReplicas)" = 3 ]'
k get sp

echo
if [ ${#skipped[@]} -gt 0 ]; then
    echo "e2e passed, with ${#skipped[@]} step(s) SKIPPED:"
    printf '  - %s\n' "${skipped[@]}"
else
    echo "e2e passed"
fi
