# One image holding every Dynamo binary; the container's command picks the service:
#   dynamo-ring | dynamo-storage | dynamo-coordinator | dynamo-operator | dynamo (the CLI)
# Every service reads its whole configuration from flags and DYNAMO_* variables; the data
# directory is /var/lib/dynamo (mount a volume there), secrets go under /etc/dynamo.
#
# Targets:
#   runtime (the default)  builds the workspace from source in RUST_IMAGE
#   prebuilt               copies binaries already built on the host (BIN_DIR): no step
#                          needs the network, so it builds offline on any Debian base
# The base images are arguments, so a registry mirror or an offline base can stand in:
#   docker build --target prebuilt --build-arg BIN_DIR=target/release \
#     --build-arg LAYOUT_IMAGE=dynamo-base:bookworm --build-arg RUNTIME_IMAGE=dynamo-base:bookworm .

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG LAYOUT_IMAGE=docker.io/library/debian:bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# The directories the services write, owned by the unprivileged user, made where a shell
# exists: the runtime image needs none.
FROM ${LAYOUT_IMAGE} AS layout
RUN mkdir -p /layout/var/lib/dynamo /layout/etc/dynamo/secrets /layout/etc/dynamo/tls /layout/usr/local/bin \
    && chown -R 10001:10001 /layout/var/lib/dynamo /layout/etc/dynamo \
    && chmod 0700 /layout/var/lib/dynamo /layout/etc/dynamo/secrets

FROM ${RUNTIME_IMAGE} AS base
COPY --from=layout /layout/ /
ENV DYNAMO_DATA_DIR=/var/lib/dynamo \
    DYNAMO_LOG_JSON=true
WORKDIR /var/lib/dynamo
USER 10001:10001
# ring service, storage node, coordinator (and the operator's health and metrics)
EXPOSE 7000 7100 8080
CMD ["dynamo", "--help"]

FROM base AS prebuilt
ARG BIN_DIR=target/release
COPY ${BIN_DIR}/dynamo ${BIN_DIR}/dynamo-ring ${BIN_DIR}/dynamo-storage ${BIN_DIR}/dynamo-coordinator \
     ${BIN_DIR}/dynamo-operator /usr/local/bin/

# Builds from source; after `prebuilt`, so that a builder without BuildKit, which builds
# every stage before the target, never needs RUST_IMAGE for the prebuilt one.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/dynamo target/release/dynamo-ring target/release/dynamo-storage \
       target/release/dynamo-coordinator target/release/dynamo-operator /out/

FROM base AS runtime
COPY --from=build /out/ /usr/local/bin/
