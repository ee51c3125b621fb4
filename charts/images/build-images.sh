#!/usr/bin/env bash
# Assembles the lanyard-broker and lanyard-sidecar container images from prebuilt binaries,
# the way goreleaser/ko-style builds add a binary to an empty image: the binary (stripped),
# the dynamic loader and the shared libraries `ldd` lists, CA certificates, /etc/passwd and
# /etc/group with the non-root user 65532, /tmp; no shell, no package manager. amd64 only
# (glibc target; no base image is pulled). docs/KUBERNETES.md ("Images") says more.
#
#   charts/images/build-images.sh rootfs BINARY DIR
#       Writes the root filesystem for BINARY into DIR (used by the Containerfile too).
#   charts/images/build-images.sh build [--bin-dir DIR] [--tag TAG] [--out DIR] [--storage DIR]
#       Builds localhost/lanyard/lanyard-broker:TAG and localhost/lanyard/lanyard-sidecar:TAG
#       with buildah (from scratch, --isolation chroot semantics: no RUN step is needed) from
#       DIR/lanyard-broker and DIR/lanyard-sidecar (default target/release; the tests use the
#       binaries `cargo test` built in target/debug), and exports each as OUT/NAME.oci.tar.
#       --storage gives buildah its own --root/--runroot (default: buildah's own).
#
# Release: `cargo build --release --locked -p lanyard-broker -p lanyard-sidecar`, then
#   charts/images/build-images.sh build --bin-dir target/release --tag "$VERSION" --out dist/
# and push with `skopeo copy oci-archive:dist/lanyard-broker.oci.tar docker://REGISTRY/...`.
set -euo pipefail

die() { echo "build-images.sh: $*" >&2; exit 1; }

# The root filesystem of one binary: DIR/usr/local/bin/NAME and what it needs to start.
assemble_rootfs() {
  local bin="$1" root="$2" name
  [[ -x "$bin" ]] || die "$bin is not an executable binary"
  name="$(basename "$bin")"
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$bin" "$root/usr/local/bin/$name"
  # Debug information is of no use in the image (the tests build from debug binaries).
  strip --strip-debug "$root/usr/local/bin/$name" 2>/dev/null || true
  chmod 0755 "$root/usr/local/bin/$name"
  # The loader and the libraries, at the paths the binary names (dereferenced copies).
  local lib
  while read -r lib; do
    [[ -n "$lib" ]] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
  [[ -n "$(find "$root" -name 'ld-linux*' -print -quit)" ]] || die "no dynamic loader found for $bin (a static binary needs none: drop this check)"
  local ca=/etc/ssl/certs/ca-certificates.crt
  [[ -f "$ca" ]] || die "$ca is missing: apt-get install ca-certificates"
  cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
}

build_images() {
  local bin_dir=target/release tag=dev out=target/images storage=""
  while (($#)); do
    case "$1" in
      --bin-dir) bin_dir="$2"; shift 2 ;;
      --tag) tag="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      --storage) storage="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  command -v buildah >/dev/null || die "buildah is not installed (apt-get install buildah)"
  local B=(buildah)
  if [[ -n "$storage" ]]; then
    B+=(--root "$storage/root" --runroot "$storage/runroot" --storage-driver vfs)
  fi
  mkdir -p "$out"
  local work name ctr version
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  for name in lanyard-broker lanyard-sidecar; do
    assemble_rootfs "$bin_dir/$name" "$work/$name"
    version="$("$bin_dir/$name" --version | awk '{print $2}')"
    ctr="$("${B[@]}" from scratch)"
    "${B[@]}" copy "$ctr" "$work/$name" / >/dev/null
    "${B[@]}" config \
      --os linux --arch amd64 \
      --user 65532:65532 \
      --entrypoint "[\"/usr/local/bin/$name\"]" --cmd '[]' \
      --workingdir / \
      --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
      --label org.opencontainers.image.title="$name" \
      --label org.opencontainers.image.version="$version" \
      --label org.opencontainers.image.source=https://github.com/lanyard-dev/lanyard \
      --label org.opencontainers.image.licenses=Apache-2.0 \
      "$ctr"
    "${B[@]}" commit -q --rm "$ctr" "localhost/lanyard/$name:$tag" >/dev/null
    rm -f "$out/$name.oci.tar"
    "${B[@]}" push -q "localhost/lanyard/$name:$tag" "oci-archive:$out/$name.oci.tar:$name:$tag" >/dev/null
    echo "build-images.sh: localhost/lanyard/$name:$tag ($version) -> $out/$name.oci.tar"
  done
}

case "${1:-}" in
  rootfs) shift; [[ $# -eq 2 ]] || die "usage: rootfs BINARY DIR"; assemble_rootfs "$1" "$2" ;;
  build) shift; build_images "$@" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
