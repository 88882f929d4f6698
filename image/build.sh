#!/usr/bin/env bash
# Builds ebb's container image WITHOUT Docker, from scratch, with Debian's buildah, and checks it.
# (The Dockerfile at the repository root is the same image for Docker users; it needs base images this
# machine cannot pull.)
#
# The image: one stripped multi-call binary /usr/local/bin/ebb (every component is a subcommand: the
# manifests say `command: [ebb, autoscaler]`, `[ebb, activator]`, `[ebb, queue-proxy]`), the shared
# libraries it links (glibc, libgcc_s: what distroless `cc` holds), CA certificates, /etc/passwd and
# /etc/group with user nonroot (65532), an empty /tmp; no shell, no package manager. Runs as 65532:65532.
#
#   image/build.sh                  # release build, image ghcr.io/ebb-dev/ebb:0.1.0 in buildah's storage
#   EBB_IMAGE=registry/ebb:tag image/build.sh
#   EBB_IMAGE_BINARY=path/to/ebb image/build.sh   # package a binary built already (CI: the test build's)
#   EBB_IMAGE_ARCHIVE=ebb.tar image/build.sh      # also write an OCI archive (`podman load`, `skopeo copy`)
#
# Then push with `buildah push ghcr.io/ebb-dev/ebb:0.1.0 docker://...` (same --storage-driver).
# Needs root (or buildah's rootless set-up), `apt-get install buildah` and binutils' `strip`.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${EBB_IMAGE:-ghcr.io/ebb-dev/ebb:0.1.0}"
# vfs: no overlay or fuse needed, works inside containers and VMs alike.
buildah=(buildah --storage-driver vfs)

if [[ -n "${EBB_IMAGE_BINARY:-}" ]]; then
  binary="$EBB_IMAGE_BINARY"
else
  echo "== cargo build --release -p ebb"
  cargo build --release --locked -p ebb --bin ebb
  binary="${CARGO_TARGET_DIR:-target}/release/ebb"
fi
[[ -x "$binary" ]] || { echo "image/build.sh: no binary at $binary" >&2; exit 1; }

stage="$(mktemp -d)"
container=""
cleanup() {
  [[ -n "$container" ]] && "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true
  rm -rf "$stage"
}
trap cleanup EXIT

echo "== staging the file system"
install -d -m 0755 "$stage/usr/local/bin" "$stage/etc/ssl/certs"
install -d -m 1777 "$stage/tmp"
strip --strip-all -o "$stage/usr/local/bin/ebb" "$binary"
chmod 0755 "$stage/usr/local/bin/ebb"
# The shared libraries the binary links, at the paths the dynamic loader looks for them (the loader itself
# included); copied from this machine, the one the binary was linked on.
libraries="$(ldd "$binary" | awk '/=> \//{print $3} $1 ~ /^\/.*ld-linux/{print $1}')"
[[ -n "$libraries" ]] || { echo "image/build.sh: ldd found no libraries (a static binary?)" >&2; exit 1; }
for library in $libraries; do
  install -D -m 0755 "$(readlink -f "$library")" "$stage$library"
done
# On merged-/usr systems ldd may name /lib/x86_64-linux-gnu/...: the loader finds them there.
cp /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$stage/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$stage/etc/group"
install -d -m 0755 -o 65532 -g 65532 "$stage/home/nonroot"

echo "== buildah: from scratch"
container="$("${buildah[@]}" from scratch)"
"${buildah[@]}" copy --quiet "$container" "$stage/" / >/dev/null
version="$("$binary" --version | awk '{print $2}')"
"${buildah[@]}" config \
  --user 65532:65532 \
  --workingdir /home/nonroot \
  --env PATH=/usr/local/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --entrypoint '["/usr/local/bin/ebb"]' \
  --cmd '--help' \
  --label org.opencontainers.image.title=ebb \
  --label "org.opencontainers.image.version=$version" \
  --label org.opencontainers.image.source=https://github.com/ebb-dev/ebb \
  --label "org.opencontainers.image.description=ebb: request-driven autoscaling with scale-to-zero (built by image/build.sh)" \
  "$container"

echo "== checks inside the image (buildah run --isolation chroot, as the image's user)"
run() { "${buildah[@]}" run --isolation chroot "$container" -- "$@"; }
run /usr/local/bin/ebb --version
run /usr/local/bin/ebb queue-proxy --help | sed -n 1p
# The components the manifests run, by their subcommand through PATH, as a kubelet would start them.
for component in queue-proxy activator autoscaler; do
  run ebb "$component" --help >/dev/null
done
if run /bin/sh -c true 2>/dev/null; then
  echo "image/build.sh: the image has a shell" >&2
  exit 1
fi
user="$("${buildah[@]}" inspect --format '{{.OCIv1.Config.User}}' "$container")"
[[ "$user" == "65532:65532" ]] || { echo "image/build.sh: runs as '$user', not 65532:65532" >&2; exit 1; }

echo "== commit $image"
"${buildah[@]}" commit --quiet --rm "$container" "$image" >/dev/null
container=""
if [[ -n "${EBB_IMAGE_ARCHIVE:-}" ]]; then
  "${buildah[@]}" push --quiet "$image" "oci-archive:$EBB_IMAGE_ARCHIVE"
fi
"${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$image"
echo "image/build.sh: $image built and checked"
