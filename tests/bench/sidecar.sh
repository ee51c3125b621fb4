#!/usr/bin/env bash
# Sidecar benchmark against a local `lanyard-broker dev` (see docs/benchmarks.md).
#
#   tests/bench/sidecar.sh [STEADY_SECONDS] [TTL_SECONDS] [STARTS]
#
# 1. start -> files on disk: STARTS runs of `lanyard-sidecar init` with a fresh bootstrap token
#    each, wall time from process start to exit (the files are written before exit).
# 2. steady state: `lanyard-sidecar run` with credentials of TTL_SECONDS (refreshed at ~70%)
#    for STEADY_SECONDS; VmRSS sampled every 5 s, CPU time from /proc/PID/stat at the end.
# Uses target/release/lanyard-sidecar (cargo build --release -p lanyard-sidecar) and
# target/debug/lanyard-broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
steady=${1:-600}
ttl=${2:-10}
starts=${3:-20}
sidecar=target/release/lanyard-sidecar
broker=target/debug/lanyard-broker
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$broker" dev --dir "$work/dev" --listen "127.0.0.1:$port" --no-sidecar >"$work/broker.log" 2>&1 &
for _ in $(seq 100); do [[ -f "$work/dev/tls/ca.pem" ]] && curl -sf --cacert "$work/dev/tls/ca.pem" "https://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
export LANYARD_BROKER_URL="https://127.0.0.1:$port" LANYARD_CA_FILE="$work/dev/tls/ca.pem"
export LANYARD_ADMIN_TOKEN_FILE="$work/dev/admin-token"
mint() { "$broker" token create --role dev-app --ttl 10m 2>/dev/null; }

echo "== start -> files ($starts runs)"
times=()
for i in $(seq "$starts"); do
  mint >"$work/bt"
  rm -rf "$work/s"
  t0=$(date +%s%N)
  "$sidecar" init --broker "$LANYARD_BROKER_URL" --ca "$LANYARD_CA_FILE" \
    --bootstrap-token-file "$work/bt" --dir "$work/s" 2>/dev/null
  t1=$(date +%s%N)
  [[ -s "$work/s/dev-app/token" ]] || { echo "no file written" >&2; exit 1; }
  times+=($(( (t1 - t0) / 1000000 )))
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "ms: min %d  median %d  p90 %d  max %d\n", a[1], a[int((NR+1)/2)], a[int(NR*0.9)], a[NR]}'
mint >"$work/bt"
/usr/bin/time -v "$sidecar" init --broker "$LANYARD_BROKER_URL" --ca "$LANYARD_CA_FILE" \
  --bootstrap-token-file "$work/bt" --dir "$work/s2" 2>&1 >/dev/null | grep -E "Maximum resident|Elapsed"

echo "== steady state: ${steady}s, TTL ${ttl}s"
mint >"$work/bt"
"$sidecar" run --broker "$LANYARD_BROKER_URL" --ca "$LANYARD_CA_FILE" \
  --bootstrap-token-file "$work/bt" --dir "$work/s3" --ttl-seconds "$ttl" \
  --health-listen 127.0.0.1:0 2>"$work/run.log" &
pid=$!
max=0; samples=()
end=$(( $(date +%s) + steady ))
while (( $(date +%s) < end )); do
  sleep 5
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  samples+=("$rss"); (( rss > max )) && max=$rss
  (( ${#samples[@]} % 12 == 0 )) && echo "t=$(( ${#samples[@]} * 5 ))s VmRSS ${rss} KiB threads $(awk '/Threads/ {print $2}' "/proc/$pid/status")"
done
read -r utime stime < <(awk '{print $14, $15}' "/proc/$pid/stat")
hz=$(getconf CLK_TCK)
kill -TERM "$pid"; wait "$pid" || true
refreshes=$(grep -c "credential written" "$work/run.log" || true)
last=${samples[-1]}
echo "refreshes: $refreshes"
echo "VmRSS KiB: first ${samples[0]}, last $last, max $max"
awk -v u="$utime" -v s="$stime" -v hz="$hz" -v t="$steady" 'BEGIN {cpu=(u+s)/hz; printf "CPU: %.2f s user+sys over %d s = %.3f%% of one core\n", cpu, t, 100*cpu/t}'
