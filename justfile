# Everyday recipes. Install just with `cargo install just`.

default:
    @just --list

# Build the binaries (ringlb, ringlb-replica, ringlb-analyze, …) in release mode.
build:
    cargo build --release

# The test command of the README and CI.
test:
    cargo test

# Format, lint, test: what CI runs.
ci:
    bash .ci/run

# Run the load balancer with three local replicas on 127.0.0.1:5000.
run *ARGS:
    cargo run --release -- up {{ARGS}}

# Run with the course's hashing (512 slots, 9 virtual nodes, quadratic hashes).
run-course *ARGS:
    cargo run --release -- up --preset course {{ARGS}}

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Proxy benchmark against nginx and HAProxy, HTTP/1.1 (wrk) and HTTP/2 (h2load): installs them from apt if missing;
# with bounded-loads twins (ringlb --balance-factor 1.25 and 100, HAProxy
# hash-balance-factor 125); writes docs/bench.md. Options: --rounds N --duration S
# --connections C --h2-connections C --h2-streams M --no-http2 --balance-factors C,...|off --baseline OTHER_RINGLB --bin-dir DIR
# (default: cargo's target directory, CARGO_TARGET_DIR honoured).
bench *ARGS:
    python3 bench/proxy_bench.py {{ARGS}}

# Failover benchmark: one of three backends killed (SIGKILL) or frozen (SIGSTOP) under
# load, behind ringlb, nginx and HAProxy; writes a section of docs/bench.md. Options:
# --duration S --fault-at S --connections C --proxies ringlb,nginx,haproxy --faults kill,freeze --no-write.
bench-failover *ARGS:
    python3 bench/failover_bench.py {{ARGS}}

# --- Kubernetes (see README, Kubernetes) ---

# Regenerate crds/serverpool.yaml from the Rust types (a test fails when it is stale).
crd:
    cargo run --quiet -- crd > crds/serverpool.yaml

# Build the images ringlb:dev and ringlb-replica:dev (FROM scratch, static binaries).
image:
    bash scripts/build-images.sh

# Container smoke test of both images: replica /home and /heartbeat, ringlb in front of it.
image-smoke: image
    bash scripts/image-smoke.sh

# Create the kind cluster `ringlb` (if needed), load both images into it and make it
# kubectl's current context (for `just deploy`).
kind-up: image
    kind get clusters | grep -qx ringlb || kind create cluster --config kind-config.yaml --wait 180s
    kind load docker-image ringlb:dev ringlb-replica:dev --name ringlb
    kubectl config use-context kind-ringlb

# Into kubectl's current context: the CRD (waits until it is established: deploy/'s
# ServerPool is refused before), then deploy/base: the operators and proxies, their RBAC,
# the Services (traffic and ops), the NetworkPolicy, the disruption budgets and the demo
# pool (the operator makes its admin token Secret); returns once both Deployments
# have rolled out and the pool `demo` is Ready (all its replicas ready).
deploy:
    kubectl apply -f crds/
    kubectl wait --for=condition=established crd/serverpools.ringlb.dev --timeout=60s
    kubectl apply -k deploy/
    kubectl rollout status deploy/ringlb-operator --timeout=180s
    kubectl rollout status deploy/ringlb-proxy --timeout=180s
    kubectl wait --for=condition=Ready sp/demo --timeout=180s

# The README's Kubernetes path on kind, scripted with assertions, in a throwaway
# namespace; removes only what it created (an existing cluster is kept).
e2e:
    bash scripts/e2e-kind.sh

# Delete the kind cluster.
kind-down:
    kind delete cluster --name ringlb

# --- Docker (see README, Docker) ---

# The Docker tests (tests/docker.rs) on freshly built images, with their figures: time
# until N serve again and failed requests after docker kill/stop/pause/network disconnect.
test-docker: image
    cargo test --test docker -- --nocapture
