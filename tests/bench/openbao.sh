#!/usr/bin/env bash
# Vault-backend benchmarks against a real OpenBao (docs/benchmarks.md, "The vault backend
# against OpenBao"): cached and uncached issuance, and 1,000 concurrent requests for one KV
# path and for one database role, with OpenBao's file audit device counting upstream calls.
#
#   tests/bench/openbao.sh
#
# Installs OpenBao (tests/peers/openbao.sh) and finds PostgreSQL (tests/peers/postgres.sh)
# as ./test.sh does; the broker runs in-process, debug build (the test profile), like the
# STS figures. Not a test: figures are never asserted.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/peers/openbao.sh
source tests/peers/postgres.sh
cargo test -p lanyard-broker --locked --test bench_openbao -- --ignored --nocapture --test-threads 1 2>&1 \
  | grep -A6 'BENCH'
