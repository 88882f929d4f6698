# syntax=docker/dockerfile:1
# ebb's container image for Docker users: ghcr.io/ebb-dev/ebb:0.1.0 with one stripped multi-call binary,
# /usr/local/bin/ebb; every component is a subcommand (the manifests say `command: [ebb, autoscaler]`,
# `[ebb, activator]`, and the injected sidecar `[ebb, queue-proxy]`).
#
#   docker build -t ghcr.io/ebb-dev/ebb:0.1.0 .
#
# THIS FILE IS NOT BUILT BY THIS REPOSITORY'S CI (it has no Docker engine and cannot pull these base
# images). CI builds and checks the same layout with `image/build.sh` (buildah, from scratch, no Docker):
# the same binary path, user 65532:65532, entrypoint and command, glibc and libgcc_s, CA certificates, no shell.
#
# Builder: Rust on Debian bookworm (glibc 2.36), the release of the runtime image, so the binary links
# against the glibc it runs with. Runtime: distroless `cc` (glibc, libgcc_s, CA certificates, no shell) as
# user nonroot (65532).

FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace (see .dockerignore): cargo needs every member's manifest to build one package.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ebb --bin ebb \
    && mkdir -p /out \
    && strip --strip-all -o /out/ebb target/release/ebb

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ebb /usr/local/bin/ebb
ENV PATH=/usr/local/bin
USER 65532:65532
WORKDIR /home/nonroot
# The manifests set `command`; run alone, the image prints ebb's help.
ENTRYPOINT ["/usr/local/bin/ebb"]
CMD ["--help"]
