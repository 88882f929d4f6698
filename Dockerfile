# syntax=docker/dockerfile:1
# The one image of every ebb component: ghcr.io/ebb-dev/ebb:0.1.0 with /usr/local/bin/{ebb,queue-proxy,
# activator,autoscaler}. Containers name the program in `command` (manifests/).
#
# NOT BUILT IN CI HERE: the machine this repository is developed and tested on has no Docker engine, so this
# file has never been built by the project's CI. The tests run the same binaries from `cargo build`.
#
#   docker build -t ghcr.io/ebb-dev/ebb:0.1.0 .
#
# Builder: Rust on Debian bookworm (glibc 2.36), the same Debian release as the runtime image, so the binaries
# link against the glibc they run with. The runtime is distroless `cc` (glibc, libgcc, CA certificates, no
# shell) as user nonroot (65532).

FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY config config
COPY process process
COPY http http
COPY kpa kpa
COPY queue-proxy queue-proxy
COPY activator activator
COPY autoscaler autoscaler
COPY benches benches
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p ebb --bin ebb \
        -p ebb-queue-proxy --bin queue-proxy \
        -p ebb-activator --bin activator \
        -p ebb-autoscaler --bin autoscaler \
    && mkdir -p /out \
    && cp target/release/ebb target/release/queue-proxy target/release/activator target/release/autoscaler /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
# The manifests set `command`; run alone, the image prints ebb's help.
ENTRYPOINT ["/usr/local/bin/ebb"]
CMD ["--help"]
