#!/usr/bin/env bash
# The sidecar's resident memory, as defined in docs/benchmarks.md: `VmRSS` of the
# `lanyard-sidecar` process sampled every second from 15 s to DURATION s after its start; the
# figure is the maximum (target: <= 10 MiB = 10240 KiB). Two cases run side by side:
#
#   bootstrap  `lanyard-sidecar run` with a bootstrap token against `lanyard-broker dev`,
#              default layout, credentials of TTL_SECONDS (refreshed at about 70%).
#   aws        `lanyard-sidecar run --aws-listen` serving an `aws-sts` role, the broker
#              (`lanyard-broker serve`, the dev directory's config plus `backends.aws_sts`)
#              assuming it on a real STS (moto_server on loopback); the endpoint is asked
#              for the credential every 5 s, as an AWS SDK in the app would.
#
#   tests/bench/sidecar-rss.sh [DURATION_SECONDS] [TTL_SECONDS]      (defaults: 600, 10)
#
# Builds `lanyard-sidecar` with `cargo build --release` (the binary measured) and
# `lanyard-broker` with `cargo build` (its build does not change the sidecar's memory; set
# LANYARD_BENCH_BROKER_PROFILE=release to build it in release too). Installs moto through
# tests/peers/moto.sh. Prints one `max VmRSS` line per case; exits 1 if a case failed to run.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-600}
ttl=${2:-10}
from=15
broker_profile=${LANYARD_BENCH_BROKER_PROFILE:-debug}

cargo build --release --locked -p lanyard-sidecar
if [[ $broker_profile == release ]]; then
  cargo build --release --locked -p lanyard-broker
else
  cargo build --locked -p lanyard-broker
fi
# shellcheck source=tests/peers/moto.sh
source tests/peers/moto.sh
sidecar=$PWD/target/release/lanyard-sidecar
broker=$PWD/target/$broker_profile/lanyard-broker

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_https() { # URL CA
  for _ in $(seq 200); do
    [[ -f $2 ]] && curl -sf --cacert "$2" "$1/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

# Case 1: `lanyard-broker dev`.
p1=$(free_port)
"$broker" dev --dir "$work/dev" --listen "127.0.0.1:$p1" --no-sidecar >"$work/dev.log" 2>&1 &
pids+=($!)
url1="https://127.0.0.1:$p1"
wait_https "$url1" "$work/dev/tls/ca.pem"

# Case 2: a dev directory made by `dev` (CA, certificate, admin token), then served by
# `serve` with an aws-sts backend on moto.
p2=$(free_port)
"$broker" dev --dir "$work/sts" --listen "127.0.0.1:$p2" --no-sidecar >"$work/sts-dev.log" 2>&1 &
devpid=$!
wait_https "https://127.0.0.1:$p2" "$work/sts/tls/ca.pem"
kill -INT "$devpid"; wait "$devpid" || true
pm=$(free_port)
"$LANYARD_MOTO_SERVER" -H 127.0.0.1 -p "$pm" >"$work/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$pm/moto-api/" >/dev/null && break; sleep 0.2; done
mkdir "$work/sts-policies"
sed -i "s#^policies_dir:.*#policies_dir: \"$work/sts-policies\"#" "$work/sts/broker.yaml"
cat >>"$work/sts/broker.yaml" <<EOF
backends:
  aws_sts:
    region: us-east-1
    endpoint_url: http://127.0.0.1:$pm
EOF
cat >"$work/sts-policies/sts.yaml" <<'EOF'
roles:
  sts-app:
    backend: aws-sts
    max_ttl_seconds: 900
    default_ttl_seconds: 900
    settings:
      role_arn: arn:aws:iam::123456789012:role/bench
rules:
  - name: bench-bootstrap-gets-sts-app
    match:
      bootstrap_role: sts-app
    roles: [sts-app]
EOF
"$broker" serve --config "$work/sts/broker.yaml" >"$work/sts.log" 2>&1 &
pids+=($!)
url2="https://127.0.0.1:$p2"
wait_https "$url2" "$work/sts/tls/ca.pem"

mint() { # URL DIR ROLE
  "$broker" token create --role "$3" --ttl 10m --broker "$1" --ca "$2/tls/ca.pem" \
    --admin-token-file "$2/admin-token" 2>/dev/null
}
mint "$url1" "$work/dev" dev-app >"$work/bt1"
mint "$url2" "$work/sts" sts-app >"$work/bt2"

"$sidecar" run --broker "$url1" --ca "$work/dev/tls/ca.pem" --bootstrap-token-file "$work/bt1" \
  --dir "$work/s1" --ttl-seconds "$ttl" --health-listen 127.0.0.1:0 2>"$work/run1.log" &
s1=$!
pids+=($s1)
pa=$(free_port)
"$sidecar" run --broker "$url2" --ca "$work/sts/tls/ca.pem" --bootstrap-token-file "$work/bt2" \
  --dir "$work/s2" --aws-listen "127.0.0.1:$pa" --health-listen 127.0.0.1:0 2>"$work/run2.log" &
s2=$!
pids+=($s2)
start_ns=$(date +%s%N)
start=$((start_ns / 1000000000))

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
max1=0; max2=0; at1=0; at2=0; first1=0; first2=0; served=0; asked=0; t=-1
while :; do
  # Wake at each whole second after the start.
  t=$((t + 1))
  left_ns=$((start_ns + t * 1000000000 - $(date +%s%N)))
  ((left_ns > 0)) && sleep "$(awk -v n="$left_ns" 'BEGIN {printf "%.3f", n / 1e9}')"
  ((t >= duration)) && break
  if ((t >= from)); then
    for c in 1 2; do
      pid=$([[ $c == 1 ]] && echo "$s1" || echo "$s2")
      kill -0 "$pid" 2>/dev/null || { echo "case $c: the sidecar exited; its log:" >&2; cat "$work/run$c.log" >&2; exit 1; }
      r=$(rss "$pid")
      if [[ $c == 1 ]]; then
        ((first1 == 0)) && first1=$r
        ((r > max1)) && { max1=$r; at1=$t; }
      else
        ((first2 == 0)) && first2=$r
        ((r > max2)) && { max2=$r; at2=$t; }
      fi
    done
    ((t % 60 == 0)) && echo "t=${t}s VmRSS KiB: bootstrap $(rss "$s1") (max $max1), aws $(rss "$s2") (max $max2)"
  fi
  if ((t % 5 == 0)) && [[ -f $work/s2/aws-container-token ]]; then
    asked=$((asked + 1))
    curl -sf -H "Authorization: $(cat "$work/s2/aws-container-token")" \
      "http://127.0.0.1:$pa/v1/aws-credentials" | grep -q AccessKeyId && served=$((served + 1))
  fi
done

refreshes=$(grep -c "credential written" "$work/run1.log" || true)
echo "== VmRSS of lanyard-sidecar, sampled every 1 s from ${from} s to ${duration} s"
echo "bootstrap (run against lanyard-broker dev, TTL ${ttl} s, $refreshes writes): first $first1 KiB, max $max1 KiB ($(awk -v k="$max1" 'BEGIN {printf "%.2f", k/1024}') MiB) at ${at1} s"
echo "aws (run --aws-listen, aws-sts role on moto, endpoint answered $served of $asked asks): first $first2 KiB, max $max2 KiB ($(awk -v k="$max2" 'BEGIN {printf "%.2f", k/1024}') MiB) at ${at2} s"
((served > 0)) || { echo "the AWS endpoint never served a credential; run log:" >&2; cat "$work/run2.log" >&2; exit 1; }
