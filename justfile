# Everyday recipes. Install just with `cargo install just`.

default:
    @just --list

# Build both binaries (ringlb, ringlb-replica) in release mode.
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

# Proxy benchmark against nginx and HAProxy (installs them and wrk from apt if missing);
# writes docs/bench.md. Options: --rounds N --duration S --connections C.
bench *ARGS:
    python3 bench/proxy_bench.py {{ARGS}}
