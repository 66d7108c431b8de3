# The ringlb load balancer / operator image: one static binary, nothing else.
#
# Build context: a folder holding the static `ringlb` binary, which
# `just image` (scripts/build-images.sh) prepares:
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --target x86_64-unknown-linux-gnu
#   docker build -f docker/ringlb.Dockerfile -t ringlb:dev <folder with ringlb>
FROM scratch
COPY ringlb /ringlb
# No root, no shell: nothing in the image but the binary.
USER 65532:65532
EXPOSE 5000 5001
ENTRYPOINT ["/ringlb"]
# In a cluster: reconcile the namespace's ServerPools (deploy/base/operator.yaml); the proxy
# runs the same image with `proxy` (deploy/base/proxy.yaml).
CMD ["operator"]
