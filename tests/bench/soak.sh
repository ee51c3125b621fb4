#!/usr/bin/env bash
# Soak (docs/benchmarks.md, "Soak"): the release `lanyard-broker serve` as production runs it
# (TLS, SQLite store, hash-chained audit log in a file with fdatasync before each answer, a
# JWKS-file issuer, default logging to a file), driven by oha: first the peak issuance rate
# (64 connections), then half of it at a fixed rate (`oha -q`) for the soak. Records p50, p99
# and p99.9 latency, the broker's RSS (VmRSS) and open file descriptors sampled from /proc
# every 5 s, and checks afterwards that every 200 has its audit record (`audit verify`).
#
#   tests/bench/soak.sh                 # 20 s peak, then 10 minutes at half of it
#   SOAK_SECONDS=60 tests/bench/soak.sh # a short run to try the script
#
# Environment: SOAK_SECONDS (600), PEAK_SECONDS (20), CONNECTIONS (64), RATE (skip the peak
# run and use this rate), NO_BUILD=1 (use the existing target/release/lanyard-broker),
# BROKER_BIN (run another lanyard-broker binary).
# Needs openssl and python3 (JWT and JWKS made here); installs oha 1.16.0 if missing.
# Not a test: run by hand; figures are never asserted.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
W="$ROOT/target/soak"
BIN="${BROKER_BIN:-$ROOT/target/release/lanyard-broker}"
SOAK_SECONDS="${SOAK_SECONDS:-600}"
PEAK_SECONDS="${PEAK_SECONDS:-20}"
CONNECTIONS="${CONNECTIONS:-64}"

command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --locked -p lanyard-broker --bin lanyard-broker

rm -rf "$W" && mkdir -p "$W/policies" && cd "$W"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
URL="https://127.0.0.1:$PORT"

# TLS: a CA and a server certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=soak-ca \
  -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile ext.cnf -out server.pem 2>/dev/null

# The issuer: an RSA key, its JWKS in a file, and one Kubernetes-style token (RS256), valid
# for the whole run.
openssl genrsa -out issuer.key 2048 2>/dev/null
ISSUER="https://issuer.soak.test"
python3 - "$ISSUER" "$(( SOAK_SECONDS + PEAK_SECONDS + 3600 ))" <<'PY'
import base64, json, subprocess, sys, time
iss, ttl = sys.argv[1], int(sys.argv[2])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
mod = subprocess.run(["openssl", "rsa", "-in", "issuer.key", "-noout", "-modulus"],
                     capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
jwk = {"kty": "RSA", "kid": "soak-1", "alg": "RS256", "use": "sig",
       "n": b64(bytes.fromhex(mod)), "e": "AQAB"}
json.dump({"keys": [jwk]}, open("jwks.json", "w"))
now = int(time.time())
claims = {"iss": iss, "aud": ["lanyard"], "sub": "system:serviceaccount:shop:api",
          "iat": now, "nbf": now, "exp": now + ttl,
          "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "api", "uid": "u1"},
                            "pod": {"name": "api-0", "uid": "p1"}}}
signing = b64(json.dumps({"alg": "RS256", "kid": "soak-1", "typ": "JWT"}).encode()) + "." + \
          b64(json.dumps(claims).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", "issuer.key"], input=signing.encode(),
                     capture_output=True, check=True).stdout
open("token", "w").write(signing + "." + b64(sig))
PY
TOKEN="$(cat token)"
head -c 32 /dev/urandom | base64 > admin-token
cat > policies/soak.yaml <<'YAML'
roles:
  app:
    backend: jwt
    max_ttl_seconds: 3600
    default_ttl_seconds: 900
rules:
  - name: shop
    match: {namespace: shop}
    roles: [app]
YAML
cat > broker.yaml <<YAML
listen: "127.0.0.1:$PORT"
public_url: "$URL"
tls: {cert_file: $W/server.pem, key_file: $W/server.key}
policies_dir: $W/policies
admin: {token_file: $W/admin-token}
store: {sqlite_path: $W/store.db}
audit: {sink: $W/audit.log}
issuers:
  - issuer: "$ISSUER"
    audiences: [lanyard]
    jwks: {file: $W/jwks.json}
YAML

"$BIN" serve --config broker.yaml > broker.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf --cacert ca.pem "$URL/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf --cacert ca.pem -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{}' "$URL/v1/credentials" >/dev/null || { echo "the broker does not issue:"; cat broker.log; exit 1; }

load() {
  oha --no-tui --output-format json --insecure -m POST -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d '{}' -c "$CONNECTIONS" "$@" "$URL/v1/credentials"
}
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

echo "machine: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
load -z 3s > warmup.json
if [ -z "${RATE:-}" ]; then
  load -z "${PEAK_SECONDS}s" > peak.json
  PEAK="$(field peak.json 'round(d["summary"]["requestsPerSec"])')"
  RATE=$(( PEAK / 2 ))
  echo "peak: $PEAK req/s over ${PEAK_SECONDS}s, $CONNECTIONS connections ($(field peak.json 'd["statusCodeDistribution"]'))"
fi

sample() {
  local start=$SECONDS
  echo "seconds,rss_kib,fds" > samples.csv
  while kill -0 "$PID" 2>/dev/null; do
    rss="$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)"
    fds="$(ls "/proc/$PID/fd" 2>/dev/null | wc -l)"
    echo "$(( SECONDS - start )),$rss,$fds" >> samples.csv
    sleep 5
  done
}
sample & SAMPLER=$!
echo "soak: $RATE req/s for ${SOAK_SECONDS}s"
load -q "$RATE" -z "${SOAK_SECONDS}s" > soak.json
kill "$SAMPLER" 2>/dev/null || true
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$SOAK_SECONDS" <<'PY'
import csv, json, sys
total = int(sys.argv[1])
d = json.load(open("soak.json"))
s, p = d["summary"], d["latencyPercentiles"]
ms = lambda v: f"{v * 1000:.2f} ms"
print(f"requests/s: {s['requestsPerSec']:.0f}; statuses: {d['statusCodeDistribution']}; errors: {d.get('errorDistribution', {})}")
print(f"latency p50 {ms(p['p50'])}, p99 {ms(p['p99'])}, p99.9 {ms(p['p99.9'])}, slowest {ms(s['slowest'])}")
rows = [(int(r["seconds"]), int(r["rss_kib"]), int(r["fds"])) for r in csv.DictReader(open("samples.csv"))]
first = [r for r in rows if r[0] <= 60]
end = [r for r in rows if r[0] >= total - 60]
rss_first, rss_end = max(r[1] for r in first), max(r[1] for r in end)
print(f"RSS: first minute max {rss_first} KiB, last minute max {rss_end} KiB, "
      f"growth {100 * (rss_end - rss_first) / rss_first:+.1f}% (peak over the run {max(r[1] for r in rows)} KiB)")
fds = [r[2] for r in rows]
print(f"open fds: first {fds[0]}, last {fds[-1]}, min {min(fds)}, max {max(fds)}")
PY
kill "$PID"; wait "$PID" 2>/dev/null || true
trap - EXIT
# Every segment of the log (audit.log, audit.log.000001, …: a new one each 256 MiB).
issued="$(cat audit.log audit.log.[0-9]* 2>/dev/null | grep -c '"event":"issue"' || true)"
ok="$(python3 -c "
import json, os
print(1 + sum(json.load(open(f))['statusCodeDistribution'].get('200', 0)
              for f in ('warmup.json', 'peak.json', 'soak.json') if os.path.exists(f)))")"
# oha drops requests still in flight when its time is up; the broker may have issued them.
if [ "$issued" -ge "$ok" ]; then verdict="every 200 is audited"; else verdict="MISSING RECORDS"; fi
echo "audit: $issued issue records for $ok answers of 200: $verdict"
"$BIN" audit verify audit.log --store store.db | tail -1
echo "files: $W (samples.csv, soak.json, peak.json, broker.log)"
