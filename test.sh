#!/usr/bin/env bash
# Runs every lanyard test: formatting, lints, the dependency policy, unit, integration and
# end-to-end tests. Installs and starts whatever the tests need; servers the tests start
# themselves (the broker, a test OIDC issuer) bind 127.0.0.1 on free ports and stop with them.
#
#   ./test.sh            everything
#   ./test.sh --quick    skip fmt/clippy (tests only)
set -euo pipefail
cd "$(dirname "$0")"

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi

if [[ $quick -eq 0 ]]; then
  step "cargo fmt --check"
  cargo fmt --all --check

  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings

  step "cargo doc (warnings are errors: broken links, bad HTML in doc comments)"
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

  step "fuzz targets compile (run them with cargo-fuzz: see fuzz/README.md)"
  cargo check --manifest-path fuzz/Cargo.toml --locked --quiet
fi

step "dependency policy: one crypto provider (aws-lc-rs), one TLS stack (rustls)"
for banned in ring openssl-sys native-tls; do
  # `cargo tree -i` prints nothing on stdout when the crate is not in this platform's graph.
  if [[ -n "$(cargo tree --workspace --locked -e normal,build -i "$banned" 2>/dev/null)" ]]; then
    echo "test.sh: banned dependency '$banned' is in the graph:" >&2
    cargo tree --workspace --locked -e normal,build -i "$banned" >&2
    exit 1
  fi
done

step "peers: real servers and artifacts the tests use (each exports where it is)"
source tests/peers/moto.sh     # moto_server (STS) and boto3 in a venv under target/peers/
source tests/peers/images.sh   # buildah test images, two OCI registries (docker-registry)
source tests/peers/debian-app.sh  # a real Debian + pip image for the scanner's false positives
source tests/peers/postgres.sh  # PostgreSQL binaries; tests start throwaway clusters
source tests/peers/openbao.sh   # OpenBao's bao binary (Vault API); tests start dev servers
source tests/peers/k8s-tools.sh   # helm, kubernetes-validate, promtool (chart and injection tests)
export LANYARD_TEST_SH=1          # tests whose peer tool is missing fail here instead of skipping
if ! command -v rpmbuild >/dev/null 2>&1; then  # the scanner's RPM database test
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null
fi

step "cargo test (unit, integration, end-to-end)"
cargo test --workspace --locked

step "all tests passed"
