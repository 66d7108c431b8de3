#!/usr/bin/env bash
# End-to-end test on a kind cluster: the README's Kubernetes path, with assertions.
#
#   kind cluster (kind-config.yaml) → images built and loaded → crds/ applied and
#   established, deploy/ applied in a throwaway namespace → both Deployments
#   (ringlb-operator, ringlb-proxy) rolled out → `kubectl get sp` shows 3/3 → two proxy
#   pods serve, each on its own → /home and /rep through the Service → kubectl scale to
#   5 → /add and /rm edit the ServerPool spec (admin token from the Secret) → a deleted
#   pod comes back under its name → a replica whose heartbeats fail (its process
#   frozen) is replaced by an emergency-<n> pod → deleting a proxy pod while a client
#   loop runs loses no request → the leader operator dies, the standby takes over the
#   lease and still replaces a failed replica → scale to 3.
#
# Needs docker, kind, kubectl and curl.
#
# What it creates, and removes at the end (only that):
# - the kind cluster $KIND_CLUSTER (default ringlb), if it does not exist yet; deleted
#   at the end unless KEEP_CLUSTER=1. An existing cluster is kept as it is: the script
#   loads the images into it (new pods run them; its own Deployments are restarted so
#   that none runs an image loaded before) and touches nothing outside its namespace
#   but the CRD.
# - the namespace $E2E_NAMESPACE (default ringlb-e2e-<random>; it must not exist):
#   deploy/ is applied into it through a kustomize overlay generated in a temporary
#   directory (`namespace:` rewrites every object and the RoleBindings' subjects), and
#   every namespaced call below goes to it (`k`). Deleted at the end unless
#   KEEP_NAMESPACE=1. A cluster may hold several such runs side by side, and the
#   README's deployment in `default` is left alone.
# - the CRD serverpools.ringlb.dev: applied (over an existing one too), deleted at the
#   end only if it did not exist before (and the namespace is not kept).
# - a NodePort Service in the namespace for the step that deletes a proxy pod: node
#   port 30500 (NODE_PORT), which kind-config.yaml publishes on 127.0.0.1; if another
#   Service of the cluster holds it, Kubernetes picks one, reached through the node's
#   published ports or its address on the kind network; if neither answers (a cluster
#   created without kind-config.yaml, Docker Desktop), that step is skipped and the
#   summary says so.
#
# Any failing line (not only an explicit `fail`) prints the line, the command and the
# state of the namespace: pools, Deployments, pods, `describe sp demo`, the Lease,
# Events, logs of both components.
# The snippets given to wait_until are single-quoted on purpose: eval'd at each try.
# shellcheck disable=SC2016,SC2034
set -Eeuo pipefail
SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

CLUSTER=${KIND_CLUSTER:-ringlb}
NS=${E2E_NAMESPACE:-ringlb-e2e-$(printf '%04x%04x' "$RANDOM" "$RANDOM")}
LOCAL_PORT=${LOCAL_PORT:-15000}
# The containerPort and hostPort of kind-config.yaml's extraPortMappings.
NODE_PORT=${NODE_PORT:-30500}
# The NodePort Service of the no-lost-request step: created and deleted by this script.
E2E_SERVICE=ringlb-e2e-nodeport
RINGLB_IMAGE=ringlb:dev
REPLICA_IMAGE=ringlb-replica:dev
CRD=serverpools.ringlb.dev
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

# What this run created (cleanup removes exactly that).
created_cluster=false
namespace_created=false
crd_created=false

# Namespaced calls: always in the test's namespace. `kc`: cluster-scoped objects only
# (the CRD, the namespace itself).
k() { kubectl --context "$CTX" --namespace "$NS" "$@"; }
kc() { kubectl --context "$CTX" "$@"; }
step() { printf '\n== %s\n' "$*"; }
# The state of the test's namespace, on stderr.
diagnostics() {
    if ! $namespace_created; then
        echo "-- (namespace $NS not created yet: nothing of this run to show)" >&2
        return
    fi
    echo "-- namespace $NS of cluster $CLUSTER" >&2
    k get sp,deploy,pods -o wide >&2 || true
    k describe sp demo >&2 || true
    k get lease "$LEASE" -o yaml >&2 || true
    echo "-- last events" >&2
    k get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 >&2 || true
    for component in operator proxy; do
        echo "-- logs of the $component pods" >&2
        k logs -l "app.kubernetes.io/name=ringlb,app.kubernetes.io/component=$component" \
            --prefix --tail=80 >&2 || true
    done
}
fail() {
    trap - ERR
    echo "e2e FAILED: $*" >&2
    diagnostics
    exit 1
}
# Any command that fails outside a condition (set -e would stop there): say where,
# dump the same state as `fail`, stop. `fail` itself ends with `exit`, which does not
# trigger ERR, so nothing is printed twice. In subshells (command substitutions,
# background loops) the trap stays silent: the failure shows in the main shell, on
# the line that ran the subshell, if it matters there.
on_error() {
    local status=$1 line=$2 command=$3 n=${#FUNCNAME[@]} top chain="" i
    [ "$BASHPID" = "$$" ] || return 0
    trap - ERR
    # In a function: name the line of the main flow that called it, and the chain.
    top=$line
    if ((n > 2)); then
        top=${BASH_LINENO[n - 2]}
        chain=" in ${FUNCNAME[1]}() at line $line"
        for ((i = 2; i < n - 1; i++)); do
            chain+=", called from ${FUNCNAME[i]}() at line ${BASH_LINENO[i - 1]}"
        done
    fi
    echo "e2e FAILED at line $top: $(sed -n "${top}p" "$SCRIPT" | sed 's/^ *//')" >&2
    echo "  \`$command\`$chain exited with status $status" >&2
    diagnostics
    exit "$status"
}
trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR

# Evals `check` (a shell snippet) once a second until it succeeds (0) or `seconds`
# pass (1). The check runs inside `if`: its failures are expected and trigger no ERR.
retry() {
    local seconds=$1 check=$2
    for _ in $(seq 1 "$seconds"); do
        if eval "$check" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}
# Like retry, but fails the test on timeout.
wait_until() {
    local seconds=$1 what=$2 check=$3
    if retry "$seconds" "$check"; then
        echo "ok: $what"
    else
        fail "timed out after ${seconds}s waiting for: $what"
    fi
}

port_forward_pid=
loop_pid=
e2e_service_created=false
skipped=()
work=$(mktemp -d)
cleanup() {
    trap - ERR
    set +e
    [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null
    [ -n "$port_forward_pid" ] && kill "$port_forward_pid" 2>/dev/null
    rm -rf "$work"
    if $created_cluster && [ -z "${KEEP_CLUSTER:-}" ]; then
        kind delete cluster --name "$CLUSTER"
        return
    fi
    # Its node port is cluster-wide: freed even when the namespace is kept.
    $e2e_service_created && k delete service "$E2E_SERVICE" --ignore-not-found >/dev/null 2>&1
    if $namespace_created && [ -n "${KEEP_NAMESPACE:-}" ]; then
        echo "kept namespace $NS (KEEP_NAMESPACE=1): kubectl --context $CTX delete namespace $NS"
        $crd_created && echo "kept the CRD $CRD with it: kubectl --context $CTX delete crd $CRD"
        return
    fi
    if $namespace_created; then
        echo "deleting namespace $NS"
        kc delete namespace "$NS" --ignore-not-found --wait=true --timeout=180s >/dev/null
    fi
    # Only when this run installed it: deleting a CRD deletes every pool of its kind.
    if $crd_created; then
        echo "deleting CRD $CRD (this run installed it)"
        kc delete crd "$CRD" --ignore-not-found >/dev/null
    fi
}
trap cleanup EXIT

# Freezes (SIGSTOP) the process of container `$2` of pod `$1` on the kind node: it
# stops answering without exiting, as a hung process or a lost node would.
freeze() {
    local pod=$1 name=$2 container pid
    container=$(docker exec "$NODE" crictl ps -q --name "^$name\$" \
        --label "io.kubernetes.pod.name=$pod" --label "io.kubernetes.pod.namespace=$NS")
    [ -n "$container" ] || fail "no running container $name for pod $pod on $NODE"
    pid=$(docker exec "$NODE" crictl inspect --output go-template --template '{{.info.pid}}' "$container")
    docker exec "$NODE" kill -STOP "$pid"
    echo "froze $pod/$name (pid $pid on $NODE)"
}

LB="http://127.0.0.1:$LOCAL_PORT"
# (Re)starts `kubectl port-forward svc/ringlb`: it sticks to one proxy pod and ends
# with it, so it is started again after a proxy pod is deleted. kubectl itself runs in
# the background (not the function `k`, whose subshell would outlive a kill).
port_forward() {
    if [ -n "$port_forward_pid" ]; then
        kill "$port_forward_pid" 2>/dev/null || true
        wait "$port_forward_pid" 2>/dev/null || true
    fi
    kubectl --context "$CTX" --namespace "$NS" port-forward svc/ringlb "$LOCAL_PORT:5000" \
        >>"$work/port-forward.log" 2>&1 &
    port_forward_pid=$!
    wait_until 30 "port-forward answers" "curl -fsS --max-time 2 $LB/rep"
}

step "cluster $CLUSTER, namespace $NS"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 180s
    created_cluster=true
else
    echo "cluster $CLUSTER exists: kept (only this run's namespace, and the CRD if it installs it, are removed at the end)"
fi
# A new namespace (`create` fails on an existing one too): this run mixes with no object
# it did not make.
existing=$(kc get namespace "$NS" --ignore-not-found -o name)
[ -z "$existing" ] || fail "namespace $NS exists: E2E_NAMESPACE must name a new namespace"
kc create -f - <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
  labels:
    app.kubernetes.io/part-of: ringlb-e2e
YAML
namespace_created=true

step "images"
bash scripts/build-images.sh
kind load docker-image "$RINGLB_IMAGE" "$REPLICA_IMAGE" --name "$CLUSTER"

step "kubectl apply -f crds/, kubectl apply -k deploy/ into namespace $NS"
# --ignore-not-found: empty when the CRD is absent, an error (ERR, the assignment
# fails) when the API server cannot say: a CRD that was there is never taken for this
# run's, and never deleted at the end.
existing=$(kc get crd "$CRD" --ignore-not-found -o name)
[ -n "$existing" ] || crd_created=true
kc apply -f crds/
kc wait --for condition=established "crd/$CRD" --timeout=60s
# deploy/ names `namespace: default` everywhere: an overlay moves every object, and the
# subjects of the RoleBindings, to $NS. kustomize refuses an absolute path to a
# resource directory, so the overlay reaches deploy/ relatively, through /.
overlay="$work/overlay"
mkdir "$overlay"
overlay_abs=$(cd "$overlay" && pwd -P)
up=
IFS=/ read -ra components <<<"${overlay_abs#/}"
for _ in "${components[@]}"; do up+=../; done
cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $NS
resources:
  - "$up${ROOT#/}/deploy"
YAML
kc kustomize "$overlay" >"$work/deploy.yaml"
! grep -q 'namespace: default' "$work/deploy.yaml" ||
    fail "the overlay leaves objects in namespace default: $(grep -n 'namespace: default' "$work/deploy.yaml")"
k apply -f "$work/deploy.yaml"
if ! $created_cluster; then
    # The images were loaded into a cluster that already ran: make sure no pod runs
    # one loaded before (imagePullPolicy IfNotPresent and the tag dev would keep it).
    # The Deployments are new in a new namespace, so this costs one early rollout.
    k rollout restart deploy/ringlb-operator deploy/ringlb-proxy
fi
# The operators first: the proxies are Ready only once the pool has a ready member.
k rollout status deploy/ringlb-operator --timeout=180s
k rollout status deploy/ringlb-proxy --timeout=180s
k wait --for=condition=Ready sp/demo --timeout=120s
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
    home=$(k get --raw "/api/v1/namespaces/$NS/pods/$pod:5000/proxy/home") ||
        fail "proxy pod $pod does not answer /home"
    [[ $home =~ Hello\ from\ Server:\ Server[123] ]] || fail "$pod: unexpected /home: $home"
    pod_rep=$(k get --raw "/api/v1/namespaces/$NS/pods/$pod:5000/proxy/rep")
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
# No token is committed: the operator made the pool's Secret demo-admin (the proxies
# could not start without it).
token=$(k get secret demo-admin -o jsonpath='{.data.token}' | base64 -d)
[ ${#token} = 64 ] || fail "demo-admin's token: ${#token} characters, expected 64 (256 bits in hex)"
[ "$(k get secret demo-admin -o jsonpath='{.metadata.ownerReferences[0].name}')" = demo ] ||
    fail "Secret demo-admin is not owned by the pool"
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
[ "$(sp_field '.status.emergencyReplacements[0].original')" = Server3 ] || fail "replacement not recorded"
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
# NodePort Service is the e2e's own (same selector as `ringlb`, in the test's
# namespace, deleted at the end), so deploy/'s Service stays as shipped. Node ports
# are cluster-wide: NODE_PORT (30500, the one kind-config.yaml publishes) may be held
# by another Service, then Kubernetes picks a free one.
selector=$(k get service ringlb \
    -o go-template='{{range $k, $v := .spec.selector}}{{printf "    %s: %s\n" $k $v}}{{end}}')
[ -n "$selector" ] || fail "Service ringlb has no selector"
# $1: the line `nodePort: N`, or nothing to let Kubernetes choose.
nodeport_service() {
    k apply -f - <<YAML
apiVersion: v1
kind: Service
metadata:
  name: $E2E_SERVICE
  namespace: $NS
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
$1
YAML
}
e2e_service_created=true
if nodeport_service "      nodePort: $NODE_PORT" 2>"$work/nodeport.err"; then
    node_port=$NODE_PORT
else
    echo "node port $NODE_PORT not available in cluster $CLUSTER: $(cat "$work/nodeport.err")"
    echo "letting Kubernetes pick a node port"
    nodeport_service ""
    node_port=$(k get service "$E2E_SERVICE" -o jsonpath='{.spec.ports[0].nodePort}')
fi
echo "Service $E2E_SERVICE: node port $node_port"
# Reached where the node publishes it on this host (kind-config.yaml: 30500 on
# 127.0.0.1), else at the node's address on the kind network if this host reaches it
# (Linux does, Docker Desktop does not: tried on the API server's port 6443).
NP=
mapping=$(docker port "$NODE" "$node_port/tcp" 2>/dev/null | head -n1 || true)
node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$NODE" |
    awk '{print $1}')
if [ -n "$mapping" ]; then
    host=${mapping%:*}
    case $host in 0.0.0.0 | '[::]' | '') host=127.0.0.1 ;; esac
    NP="http://$host:${mapping##*:}"
elif [ -n "$node_ip" ] && curl -sk -o /dev/null --max-time 3 "https://$node_ip:6443/"; then
    echo "node port $node_port is not published on this host: reaching it at the node's address $node_ip"
    NP="http://$node_ip:$node_port"
fi
if [ -z "$NP" ]; then
    echo "SKIPPED: node port $node_port of $NODE is neither published on this host nor" \
        "reachable at the node's address (${node_ip:-none}). kind-config.yaml publishes" \
        "$NODE_PORT on 127.0.0.1 when kind creates the cluster with it; to cover this step" \
        "on this host: a cluster created with kind-config.yaml in which no other Service" \
        "holds node port $NODE_PORT."
    skipped+=("deleting a proxy pod loses no request (node port $node_port unreachable from this host)")
    k delete service "$E2E_SERVICE" --wait=true
    e2e_service_created=false
else
    wait_until 60 "the node port answers at $NP" "curl -fsS --max-time 2 $NP/rep"

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
replacement_of() { sp_field ".status.emergencyReplacements[?(@.original==\"$1\")].replacement"; }
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

step "a new port rolls the pods one at a time, every request served"
# The same image on another port: a new pod template, so every replica is rolled.
before=$(k get pods -l ringlb.dev/pool=demo -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
replaced_before=$(sp_field .status.emergencyReplacements)
k patch sp demo --type merge -p '{"spec":{"port":5100}}'
served=0
deadline=$((SECONDS + 300))
until [ "$(sp_field .status.updatedReplicas)" = 3 ] && [ "$(sp_field .status.readyReplicas)" = 3 ]; do
    [ $SECONDS -lt $deadline ] || fail "rollout not done in 300 s"
    curl -fsS --max-time 5 "$LB/home" >/dev/null || fail "request $served failed during the rollout"
    served=$((served + 1))
    sleep 0.2
done
echo "ok: $served requests during the rollout, none failed"
[ "$(sp_field .status.emergencyReplacements)" = "$replaced_before" ] ||
    fail "a replica was replaced during the rollout: $(sp_field .status.emergencyReplacements)"
for pod in $(k get pods -l ringlb.dev/pool=demo -o jsonpath='{.items[*].metadata.name}'); do
    port=$(k get pod "$pod" -o jsonpath='{.spec.containers[0].ports[0].containerPort}')
    [ "$port" = 5100 ] || fail "pod $pod still on port $port"
done
k get events --field-selector reason=Created -o name | grep -q . || fail "no Created event"
echo "pods before: $(echo $before)"
k get sp

echo
if [ ${#skipped[@]} -gt 0 ]; then
    echo "e2e passed, with ${#skipped[@]} step(s) SKIPPED:"
    printf '  - %s\n' "${skipped[@]}"
else
    echo "e2e passed"
fi
