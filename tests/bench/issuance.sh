#!/usr/bin/env bash
# Issuance figures of issue 18 (docs/benchmarks.md, "Issuance: three quarters of the floor, 6×
# OpenBao"): runs `bench_https` RUNS times (release build; TLS, SQLite store, fdatasynced
# audit, the image gate on with cached verdicts), each run also measuring the floor + crypto
# server and OpenBao's token create (a fresh `bao server -dev -dev-tls` with a file audit
# device, the same `wrk -t2 -c64 -d20s`) right after lanyard, then prints every run's two
# ratios and their medians.
#
#   tests/bench/issuance.sh          # 5 runs
#   RUNS=1 tests/bench/issuance.sh   # one run to try the script
#
# Installs wrk (apt), OpenBao (tests/peers/openbao.sh) and the test registry and image
# (tests/peers/images.sh) if missing. Not a test: figures
# are never asserted. Logs of each run are kept in target/bench-issuance/.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-5}"
OUT="$PWD/target/bench-issuance"
mkdir -p "$OUT"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
# The gate's test image and registry (the bench writes the pod's admission record first).
# shellcheck source=../peers/images.sh
source tests/peers/images.sh
# shellcheck source=../peers/openbao.sh
source tests/peers/openbao.sh
cargo test --release --locked -p lanyard-broker --test bench --no-run 2>&1 | tail -1
for i in $(seq 1 "$RUNS"); do
  cargo test --release --locked -p lanyard-broker --test bench -- --ignored --nocapture \
    --exact bench_https_issuance_vs_crypto_only >"$OUT/run-$i.log" 2>&1 || {
    echo "run $i failed; see $OUT/run-$i.log" >&2
    exit 1
  }
  grep -E '^\s+(issuance:|floor|issuance /|openbao|cost:|CPU per|audit, means)' "$OUT/run-$i.log" |
    sed "s/^/run $i: /"
done
python3 - "$OUT" "$RUNS" <<'PY'
import re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
floor, bao = [], []
for i in range(1, runs + 1):
    text = open(f"{out}/run-{i}.log").read()
    floor += [float(m) for m in re.findall(r"issuance / \(floor \+ crypto\): (\d+)%", text)]
    bao += [float(m) for m in re.findall(r"issuance / openbao token create: ([\d.]+)x", text)]
print(f"issuance / (floor + crypto): {', '.join(f'{r:.0f}%' for r in floor)}; median {statistics.median(floor):.0f}%")
if bao:
    print(f"issuance / openbao token create: {', '.join(f'{r:.2f}x' for r in bao)}; median {statistics.median(bao):.2f}x")
PY
