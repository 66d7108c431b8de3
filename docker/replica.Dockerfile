# The ringlb replica image (GET /home, GET /heartbeat): one static binary.
#
# Build context: a folder holding the static `ringlb-replica` binary, which
# `just image` (scripts/build-images.sh) prepares. Configured by environment:
# SERVER_ID (the name /home reports), PORT (default 5000), REPLICA_HOST.
FROM scratch
COPY ringlb-replica /ringlb-replica
USER 65532:65532
ENV PORT=5000 REPLICA_HOST=::
EXPOSE 5000
ENTRYPOINT ["/ringlb-replica"]
