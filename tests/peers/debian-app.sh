#!/usr/bin/env bash
# Builds the real Debian application image of the scanner's false-positive test
# (broker/scan/tests/debian_app.rs): Debian 12 made by debootstrap with Debian's python3-jwt,
# python3-oauthlib and python3-requests (their docs, changelogs and the dpkg database), the
# PyPI packages of tests/debian-app/pip-packages.txt installed by pip, an app installed by
# `pip install .`, and the planted secrets of tests/debian-app/planted.txt.
#
# Source it from test.sh (it exports a variable):
#   source tests/peers/debian-app.sh
# Exports:
#   LANYARD_DEBIAN_APP_IMAGE   the image as a gzip OCI archive (tag `app`)
# Rebuilt only when tests/debian-app or this script change (cache under target/). Needs
# network access to Debian's mirror (debootstrap) and to PyPI (pip); a cold build takes a few
# minutes (docs/SCANNER.md, "Tests").

lanyard_debian_app_main() {
  local root; root="$(pwd)"
  local need=()
  command -v buildah >/dev/null || need+=(buildah)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  if ((${#need[@]})); then
    echo "debian-app.sh: installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  local key
  key="$( (cat tests/peers/debian-app.sh; find tests/debian-app -type f | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)"
  local work="$root/target/debian-app"
  local out="$work/out-$key"
  if [[ ! -f "$out/.complete" ]]; then
    echo "debian-app.sh: building the Debian application image into $out (a few minutes)"
    local start=$SECONDS
    lanyard_debian_app_umount "$work"
    rm -rf "$work" 2>/dev/null || true  # a previous build's background clean-up may still run
    mkdir -p "$out"
    local ctx="$work/ctx" mirror="${LANYARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    mkdir -p "$ctx"
    cp -r tests/debian-app/. "$ctx/"
    local r="$ctx/rootfs"
    debootstrap --variant=minbase \
      --include=python3,python3-cffi-backend,python3-pip,python3-setuptools,python3-jwt,python3-oauthlib,python3-requests \
      bookworm "$r" "$mirror" > "$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; return 1; }
    # pip inside the root (Debian's own pip, installing into /usr/local as on a real image),
    # trusting the same CA bundle as this machine's pip.
    cp /etc/ssl/certs/ca-certificates.crt "$r/tmp/lanyard-ca.crt"
    cp tests/debian-app/pip-packages.txt "$r/tmp/lanyard-requirements.txt"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    # A clean environment: this machine's CA variables name files the root does not have.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      PIP_CERT=/tmp/lanyard-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
      chroot "$r" python3 -m pip install -q --break-system-packages --root-user-action=ignore \
      -r /tmp/lanyard-requirements.txt > "$work/pip.log" 2>&1 \
      || { tail -20 "$work/pip.log" >&2; return 1; }
    rm -f "$r/tmp/lanyard-ca.crt" "$r/tmp/lanyard-requirements.txt"
    rm -rf "$r/var/cache/apt/archives/"*.deb "$r/root/.cache"
    local B=(buildah --root "$work/storage" --runroot "$work/runroot" --storage-driver vfs)
    "${B[@]}" bud --isolation chroot --layers -q -t localhost/lanyard-test/debian-app:1 \
      -f "$ctx/Containerfile" "$ctx" >/dev/null
    "${B[@]}" push -q --compression-format gzip localhost/lanyard-test/debian-app:1 \
      "oci-archive:$out/app.oci.tar:app" >/dev/null
    # Only the archive is kept: the root and buildah's storage (vfs: a full copy of the root
    # per layer, about 2 GB) are removed in the background, which takes minutes on a slow disk.
    "${B[@]}" rm -a >/dev/null 2>&1 || true
    lanyard_debian_app_umount "$work"
    local trash="$work/trash-$$"
    mkdir -p "$trash" && mv "$ctx" "$work/storage" "$work/runroot" "$trash/"
    (rm -rf "$trash" >/dev/null 2>&1 &)
    echo "$((SECONDS - start))" > "$out/build-seconds"
    touch "$out/.complete"
    echo "debian-app.sh: built in $((SECONDS - start)) s"
  fi
  export LANYARD_DEBIAN_APP_IMAGE="$out/app.oci.tar"
}

# Unmounts anything left mounted under $1 (debootstrap mounts proc and sys in the root while
# it installs; a failed run may leave them) before the directory is removed.
lanyard_debian_app_umount() {
  local m
  for m in $(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

lanyard_debian_app_main
