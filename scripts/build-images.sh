#!/usr/bin/env bash
# Builds the two container images from static binaries:
#   ringlb:dev          the load balancer / operator   (docker/ringlb.Dockerfile)
#   ringlb-replica:dev  the replica server              (docker/replica.Dockerfile)
# Both are FROM scratch, so no base image is pulled: this works without registry
# access. Override the tags with RINGLB_IMAGE / REPLICA_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."

RINGLB_IMAGE=${RINGLB_IMAGE:-ringlb:dev}
REPLICA_IMAGE=${REPLICA_IMAGE:-ringlb-replica:dev}
TARGET=${TARGET:-x86_64-unknown-linux-gnu}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

# Static glibc binaries: the images hold nothing else (no libc, no shell). Nothing
# in them resolves host names at run time except through explicit IP literals
# (KUBERNETES_SERVICE_HOST, pod IPs), so glibc's NSS limitation does not bite.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --target "$TARGET" --bin ringlb --bin ringlb-replica

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
for bin in ringlb ringlb-replica; do
    cp "$TARGET_DIR/$TARGET/release/$bin" "$context/$bin"
    if ldd "$context/$bin" 2>&1 | grep -q '=>'; then
        echo "error: $bin is not statically linked" >&2
        exit 1
    fi
done

docker build --quiet -f docker/ringlb.Dockerfile -t "$RINGLB_IMAGE" "$context"
docker build --quiet -f docker/replica.Dockerfile -t "$REPLICA_IMAGE" "$context"
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${RINGLB_IMAGE}|${REPLICA_IMAGE}) "
