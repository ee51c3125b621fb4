#!/usr/bin/env bash
# Builds the scanner's test images with buildah, exports them in every source form, and starts
# two OCI registries on loopback (anonymous, and htpasswd basic auth) holding them.
#
# Source it from test.sh (it exports variables and registers its cleanup):
#   source tests/peers/images.sh
# Exports:
#   LANYARD_TEST_IMAGES            directory of exported images (<name>.docker.tar,
#                                  <name>.oci/ (gzip), <name>.oci-zstd/, <name>.oci.tar,
#                                  <name>.oci-zstd.tar; multi.oci.tar is a two-platform index)
#   LANYARD_TEST_REGISTRY          host:port of the anonymous registry
#   LANYARD_TEST_REGISTRY_AUTH     host:port of the registry that needs basic auth
#   LANYARD_TEST_REGISTRY_USER / LANYARD_TEST_REGISTRY_PASSWORD_FILE   its credentials
# Images are rebuilt only when tests/images or this script change (cache under target/).

lanyard_images_main() {
  local root; root="$(pwd)"
  local need=()
  command -v buildah >/dev/null || need+=(buildah)
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  [[ -x /bin/busybox ]] || need+=(busybox-static)
  if ((${#need[@]})); then
    echo "images.sh: installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi

  local key
  key="$( (cat tests/peers/images.sh; find tests/images -type f | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)"
  local work="$root/target/test-images"
  local out="$work/out-$key"
  local B=(buildah --root "$work/storage" --runroot "$work/runroot" --storage-driver vfs)

  if [[ ! -f "$out/.complete" ]]; then
    echo "images.sh: building test images into $out"
    rm -rf "$work"/out-* "$work/storage" "$work/runroot"
    mkdir -p "$out"
    # Base: /bin/busybox and a few links, from scratch (no registry to pull from).
    local ctr rootfs
    ctr=$("${B[@]}" from scratch)
    local base="$work/base-rootfs"
    rm -rf "$base"; mkdir -p "$base/bin" "$base/tmp"
    cp /bin/busybox "$base/bin/busybox"
    local t; for t in sh cat echo rm ls mkdir cp env wc printf true; do ln -sf busybox "$base/bin/$t"; done
    "${B[@]}" copy "$ctr" "$base" / >/dev/null
    "${B[@]}" config --env PATH=/bin --cmd /bin/sh --os linux --arch amd64 "$ctr"
    "${B[@]}" commit -q "$ctr" localhost/lanyard-test/busybox:1 >/dev/null
    "${B[@]}" rm "$ctr" >/dev/null

    local img dir args
    for dir in tests/images/*/; do
      img="$(basename "$dir")"
      args=(--isolation chroot --layers -q -t "localhost/lanyard-test/$img:1")
      if [[ -f "$dir/build-args" ]]; then
        while IFS= read -r line; do [[ -n "$line" ]] && args+=(--build-arg "$line"); done < "$dir/build-args"
      fi
      [[ -f "$dir/npm-token" ]] && args+=(--secret "id=npm,src=$dir/npm-token")
      "${B[@]}" bud "${args[@]}" "$dir" >/dev/null
      lanyard_images_export "localhost/lanyard-test/$img:1" "$out/$img"
    done
    # A two-platform index: amd64 is clean, arm64 carries the env secrets.
    "${B[@]}" manifest create localhost/lanyard-test/multi:1 >/dev/null
    "${B[@]}" manifest add --os linux --arch amd64 localhost/lanyard-test/multi:1 \
      containers-storage:localhost/lanyard-test/multistage-clean:1 >/dev/null
    "${B[@]}" manifest add --os linux --arch arm64 localhost/lanyard-test/multi:1 \
      containers-storage:localhost/lanyard-test/env-secret:1 >/dev/null
    "${B[@]}" manifest push -q --all --format oci localhost/lanyard-test/multi:1 "oci-archive:$out/multi.oci.tar:multi" >/dev/null
    "${B[@]}" manifest push -q --all --format oci localhost/lanyard-test/multi:1 "oci:$out/multi.oci:multi" >/dev/null
    touch "$out/.complete"
  fi
  export LANYARD_TEST_IMAGES="$out"

  # Two registries on free loopback ports.
  local reg="$work/registry"
  rm -rf "$reg"; mkdir -p "$reg"
  local p1 p2
  p1=$(lanyard_free_port); p2=$(lanyard_free_port "$p1")
  htpasswd -Bbn lanyard-test "reg-$key" > "$reg/htpasswd" 2>/dev/null
  printf 'reg-%s' "$key" > "$reg/password"
  lanyard_registry_config "$reg/anon" "$p1" "" > "$reg/anon.yml"
  lanyard_registry_config "$reg/auth" "$p2" "$reg/htpasswd" > "$reg/auth.yml"
  docker-registry serve "$reg/anon.yml" > "$reg/anon.log" 2>&1 &
  LANYARD_REGISTRY_PIDS="$!"
  docker-registry serve "$reg/auth.yml" > "$reg/auth.log" 2>&1 &
  LANYARD_REGISTRY_PIDS="$LANYARD_REGISTRY_PIDS $!"
  lanyard_wait_port "$p1" "$reg/anon.log"
  lanyard_wait_port "$p2" "$reg/auth.log"
  local name
  for name in env-secret copy-env-rm multistage-clean; do
    skopeo copy -q --dest-tls-verify=false "oci-archive:$out/$name.oci.tar" "docker://127.0.0.1:$p1/lanyard/$name:1"
    skopeo copy -q --dest-tls-verify=false --dest-creds "lanyard-test:reg-$key" \
      "oci-archive:$out/$name.oci.tar" "docker://127.0.0.1:$p2/lanyard/$name:1"
  done
  skopeo copy -q --all --dest-tls-verify=false "oci-archive:$out/multi.oci.tar" "docker://127.0.0.1:$p1/lanyard/multi:1"
  skopeo copy -q --dest-tls-verify=false --format v2s2 "docker-archive:$out/npmrc-rm.docker.tar" \
    "docker://127.0.0.1:$p1/lanyard/npmrc-rm:docker"
  export LANYARD_TEST_REGISTRY="127.0.0.1:$p1"
  export LANYARD_TEST_REGISTRY_AUTH="127.0.0.1:$p2"
  export LANYARD_TEST_REGISTRY_USER="lanyard-test"
  export LANYARD_TEST_REGISTRY_PASSWORD_FILE="$reg/password"
  echo "images.sh: images in $out; registries on 127.0.0.1:$p1 (anonymous) and 127.0.0.1:$p2 (basic auth)"
}

lanyard_images_export() {
  local img="$1" dst="$2"
  "${B[@]}" push -q "$img" "docker-archive:$dst.docker.tar:$img" >/dev/null
  "${B[@]}" push -q --compression-format gzip "$img" "oci:$dst.oci:${img##*/}" >/dev/null
  "${B[@]}" push -q --compression-format zstd "$img" "oci:$dst.oci-zstd:${img##*/}" >/dev/null
  "${B[@]}" push -q --compression-format gzip "$img" "oci-archive:$dst.oci.tar:${img##*/}" >/dev/null
  "${B[@]}" push -q --compression-format zstd "$img" "oci-archive:$dst.oci-zstd.tar:${img##*/}" >/dev/null
}

lanyard_registry_config() {
  local dir="$1" port="$2" htpasswd="$3"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%s\n' "$dir" "$port"
  if [[ -n "$htpasswd" ]]; then
    printf 'auth:\n  htpasswd:\n    realm: lanyard-test\n    path: %s\n' "$htpasswd"
  fi
}

lanyard_free_port() {
  local avoid="${1:-0}" p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 30000))
    [[ "$p" == "$avoid" ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "images.sh: no free port found" >&2; return 1
}

lanyard_wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "images.sh: registry on port $1 did not start:" >&2; cat "$2" >&2; return 1
}

lanyard_images_cleanup() {
  local pid
  for pid in ${LANYARD_REGISTRY_PIDS:-}; do kill "$pid" 2>/dev/null || true; done
}

LANYARD_REGISTRY_PIDS=""
lanyard_images_main
# Chain with any EXIT trap already set by test.sh or another peer script.
__lanyard_prev_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
trap "lanyard_images_cleanup; ${__lanyard_prev_trap}" EXIT
