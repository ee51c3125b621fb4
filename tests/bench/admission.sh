#!/usr/bin/env bash
# Admission benchmarks (docs/benchmarks.md, "Admission"): the release `lanyard-broker serve` as
# production runs it (TLS, SQLite store, hash-chained audit log with fdatasync before each
# answer, admission records written durably before each answer), a real registry holding the
# test images, and AdmissionReview bodies shaped as the Kubernetes documentation shows them.
#
#   tests/bench/admission.sh setup      # build, start a registry, push the images (once)
#   tests/bench/admission.sh cached     # oha: 1,000 reviews/s over 16 connections for 20 s,
#                                       # each a new pod (a new record) of a scanned image
#   tests/bench/admission.sh cold       # 5 paired runs: a fresh broker admitting a pod of the
#                                       # ≈100 MB image it never saw, against pulling its blobs
#                                       # and a single-core zcat of them, in turn
#   tests/bench/admission.sh startup    # admitted → credentials on disk: for 50 pods, a review
#                                       # (cached verdict), then `lanyard-sidecar init` with the
#                                       # pod's token; the sidecar's own figure and the wall time
#   tests/bench/admission.sh cold-once  # one cold admission (for an outside timer)
#   tests/bench/admission.sh pull-zcat  # one pull + zcat (for an outside timer)
#   tests/bench/admission.sh teardown   # stop the registry
#
# Environment: RATE (1000), CONNECTIONS (16), SECONDS_RUN (20), RUNS (5), NO_BUILD=1.
# Needs buildah, skopeo, docker-registry (as tests/peers/images.sh installs them), openssl,
# curl, python3; installs oha 1.16.0 if missing. Not a test: figures are never asserted.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
W="$ROOT/target/bench-admission"
BIN="${BROKER_BIN:-$ROOT/target/release/lanyard-broker}"
SIDECAR="$ROOT/target/release/lanyard-sidecar"
RATE="${RATE:-1000}"
CONNECTIONS="${CONNECTIONS:-16}"
SECONDS_RUN="${SECONDS_RUN:-20}"
RUNS="${RUNS:-5}"
B=(buildah --root "$W/storage" --runroot "$W/runroot" --storage-driver vfs)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

setup() {
  command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
  [ "${NO_BUILD:-0}" = 1 ] || cargo build --release --locked -p lanyard-broker --bin lanyard-broker -p lanyard-sidecar --bin lanyard-sidecar
  mkdir -p "$W"
  # The test images (and the tools), as the tests build them.
  ( source tests/peers/images.sh >/dev/null; echo "$LANYARD_TEST_IMAGES" > "$W/images-dir" )
  # The ≈100 MB image: this machine's documentation and Python library plus 10 MB of random
  # bytes (which no compression shrinks), on busybox.
  if [[ ! -f "$W/cold.oci.tar" ]]; then
    rm -rf "$W/ctx" && mkdir -p "$W/ctx/bin" "$W/ctx/big"
    cp /bin/busybox "$W/ctx/bin/busybox"
    cp -r /usr/share/doc "$W/ctx/doc"
    mkdir -p "$W/ctx/python" && cp -r /usr/lib/python3.1* "$W/ctx/python/"
    head -c 10M /dev/urandom > "$W/ctx/big/blob.bin"
    printf 'FROM scratch\nCOPY bin /bin\nCOPY doc /usr/share/doc\nCOPY python /usr/lib/python3\nCOPY big /srv/big\n' > "$W/ctx/Dockerfile"
    "${B[@]}" bud --isolation chroot -q -t localhost/bench/cold:1 "$W/ctx" >/dev/null
    "${B[@]}" push -q --compression-format gzip localhost/bench/cold:1 "oci-archive:$W/cold.oci.tar:cold" >/dev/null
    rm -rf "$W/ctx"
  fi
  # A registry of its own, left running for the other commands (teardown stops it).
  teardown 2>/dev/null || true
  local port; port="$(free_port)"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$W/registry-data" "$port" > "$W/registry.yml"
  docker-registry serve "$W/registry.yml" > "$W/registry.log" 2>&1 &
  echo $! > "$W/registry.pid"
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  echo "127.0.0.1:$port" > "$W/registry"
  local images; images="$(cat "$W/images-dir")"
  skopeo copy -q --dest-tls-verify=false "oci-archive:$images/multistage-clean.oci.tar" "docker://127.0.0.1:$port/lanyard/clean:1"
  skopeo copy -q --dest-tls-verify=false "oci-archive:$W/cold.oci.tar" "docker://127.0.0.1:$port/bench/cold:1"
  certs
  echo "setup: registry on 127.0.0.1:$port; files in $W"
}

teardown() {
  [[ -f "$W/registry.pid" ]] && kill "$(cat "$W/registry.pid")" 2>/dev/null
  rm -f "$W/registry.pid"
}

certs() {
  cd "$W"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out server.pem 2>/dev/null
  head -c 32 /dev/urandom | base64 > admin-token
  head -c 32 /dev/urandom | base64 > webhook-token
  # A Kubernetes-style issuer: an RSA key and its JWKS in a file (pod tokens minted below).
  openssl genrsa -out issuer.key 2048 2>/dev/null
  python3 - <<'PY'
import base64, json, subprocess
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
mod = subprocess.run(["openssl", "rsa", "-in", "issuer.key", "-noout", "-modulus"],
                     capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
json.dump({"keys": [{"kty": "RSA", "kid": "bench-1", "alg": "RS256", "use": "sig",
                     "n": b64(bytes.fromhex(mod)), "e": "AQAB"}]}, open("jwks.json", "w"))
PY
  mkdir -p policies
  printf 'roles:\n  app:\n    backend: jwt\n    max_ttl_seconds: 3600\nrules:\n  - name: shop\n    match: {namespace: shop}\n    roles: [app]\n' > policies/bench.yaml
  cd "$ROOT"
}

# Starts a broker on a fresh store in $1; sets PID and URL.
start_broker() {
  local dir="$1" port
  rm -rf "$dir" && mkdir -p "$dir"
  port="$(free_port)"
  URL="https://127.0.0.1:$port"
  cat > "$dir/broker.yaml" <<YAML
listen: "127.0.0.1:$port"
public_url: "$URL"
tls: {cert_file: $W/server.pem, key_file: $W/server.key}
policies_dir: $W/policies
admin: {token_file: $W/admin-token}
store: {sqlite_path: $dir/store.db}
audit: {sink: $dir/audit.log}
issuers:
  - issuer: "https://issuer.bench.test"
    audiences: [lanyard]
    jwks: {file: $W/jwks.json}
gate:
  insecure_loopback_registries: true
  pod_tokens: gate
  admission:
    token_file: $W/webhook-token
YAML
  "$BIN" serve --config "$dir/broker.yaml" > "$dir/broker.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 200); do
    curl -sf --cacert "$W/ca.pem" "$URL/readyz" >/dev/null && return 0
    sleep 0.02
  done
  echo "the broker did not start:" >&2; cat "$dir/broker.log" >&2; return 1
}

# An AdmissionReview of a Pod CREATE (as in the Kubernetes documentation), one per line.
reviews() {
  python3 - "$1" "$2" <<'PY'
import json, sys, uuid
image, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    uid = str(uuid.uuid4())
    review = {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": f"api-{i}", "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"api-{i}", "namespace": "shop", "uid": uid,
                             "labels": {"app": "api"}},
                "spec": {"serviceAccountName": "api",
                         "containers": [{"name": "app", "image": image}]},
            },
            "oldObject": None, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
    print(json.dumps(review, separators=(",", ":")))
PY
}

review_once() {
  curl -sS --cacert "$W/ca.pem" -X POST -H "Authorization: Bearer $(cat "$W/webhook-token")" \
    -H 'content-type: application/json' --data-binary "@$2" "$1/v1/admission/validate"
}

cached() {
  local reg; reg="$(cat "$W/registry")"
  start_broker "$W/cached"
  trap 'kill $PID 2>/dev/null || true' EXIT
  # Scan ahead, as CI would right after a push; then every review is a lookup.
  "$BIN" image scan --broker "$URL" --ca "$W/ca.pem" --admin-token-file "$W/admin-token" "$reg/lanyard/clean:1" > "$W/cached/scan.txt"
  local digest; digest="$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$reg/lanyard/clean:1")"
  local image="$reg/lanyard/clean@$digest"
  reviews "$image" 1 > "$W/cached/one.json"
  review_once "$URL" "$W/cached/one.json" | grep -q '"allowed":true' || { echo "not allowed:"; review_once "$URL" "$W/cached/one.json"; exit 1; }
  reviews "$image" $(( RATE * (SECONDS_RUN + 5) )) > "$W/cached/reviews.jsonl"
  echo "machine: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  oha --no-tui --output-format json --insecure -m POST -H "Authorization: Bearer $(cat "$W/webhook-token")" \
    -H 'content-type: application/json' -Z "$W/cached/reviews.jsonl" -c "$CONNECTIONS" -q "$RATE" \
    -z "${SECONDS_RUN}s" "$URL/v1/admission/validate" > "$W/cached/oha.json"
  python3 - "$W/cached/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
ms = lambda v: f"{v * 1000:.2f} ms"
print(f"reviews/s: {s['requestsPerSec']:.0f}; statuses: {d['statusCodeDistribution']}; errors: {d.get('errorDistribution', {})}")
print(f"latency p50 {ms(p['p50'])}, p99 {ms(p['p99'])}, p99.9 {ms(p['p99.9'])}, slowest {ms(s['slowest'])}")
PY
  kill "$PID"; wait "$PID" 2>/dev/null || true
  trap - EXIT
  echo "admission audit records: $(grep -c '"event":"admission"' "$W/cached/audit.log" || true)"
  "$BIN" audit verify "$W/cached/audit.log" --store "$W/cached/store.db" | tail -1
}

# A pod token (RS256, Kubernetes claims) for pod uid $1, printed.
pod_token() {
  python3 - "$1" "$W/issuer.key" <<'PY'
import base64, json, subprocess, sys, time
uid, key = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
claims = {"iss": "https://issuer.bench.test", "aud": ["lanyard"],
          "sub": "system:serviceaccount:shop:api", "iat": now, "nbf": now, "exp": now + 3600,
          "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "api", "uid": "sa-1"},
                            "pod": {"name": "api", "uid": uid}}}
signing = b64(json.dumps({"alg": "RS256", "kid": "bench-1", "typ": "JWT"}).encode()) + "." + \
          b64(json.dumps(claims).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(),
                     capture_output=True, check=True).stdout
print(signing + "." + b64(sig))
PY
}

startup() {
  local reg; reg="$(cat "$W/registry")" d="$W/startup"
  start_broker "$d"
  trap 'kill $PID 2>/dev/null || true' EXIT
  "$BIN" image scan --broker "$URL" --ca "$W/ca.pem" --admin-token-file "$W/admin-token" "$reg/lanyard/clean:1" > "$d/scan.txt"
  local digest; digest="$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$reg/lanyard/clean:1")"
  { echo "pod,sidecar_seconds_since_admission,wall_seconds_review_to_files"
  for i in $(seq 1 "${PODS:-50}"); do
    reviews "$reg/lanyard/clean@$digest" 1 > "$d/review.json"
    local uid; uid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["request"]["object"]["metadata"]["uid"])' "$d/review.json")"
    pod_token "$uid" > "$d/token"
    rm -rf "$d/secrets"
    local t0 t1; t0=$(date +%s.%N)
    review_once "$URL" "$d/review.json" > "$d/answer.json"
    "$SIDECAR" init --broker "$URL" --ca "$W/ca.pem" --token-file "$d/token" --dir "$d/secrets" > "$d/sidecar.log" 2>&1
    t1=$(date +%s.%N)
    [[ -f "$d/secrets/app/token" ]] || { echo "no credentials written:"; cat "$d/answer.json" "$d/sidecar.log"; exit 1; }
    local own; own="$(grep -oE 'seconds_since_admission[=":]+[0-9.]+' "$d/sidecar.log" | grep -oE '[0-9.]+$')"
    echo "$i,$own,$(python3 -c "print(f'{$t1-$t0:.4f}')")"
  done; } | tee "$d/startup.csv"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  trap - EXIT
  python3 - "$d/startup.csv" <<'PY'
import csv, sys, statistics
rows = list(csv.DictReader(open(sys.argv[1])))
for col in ("sidecar_seconds_since_admission", "wall_seconds_review_to_files"):
    v = sorted(float(r[col]) for r in rows)
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    print(f"{col}: n={len(v)} p50 {p(0.5) * 1000:.1f} ms, p90 {p(0.9) * 1000:.1f} ms, max {v[-1] * 1000:.1f} ms")
PY
}

cold_once() {
  local reg; reg="$(cat "$W/registry")"
  # Written each time: the registry's port changes with every setup.
  reviews "$reg/bench/cold:1" 1 > "$W/cold-review.json"
  start_broker "$W/cold"
  local answer; answer="$(review_once "$URL" "$W/cold-review.json")"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  grep -q '"allowed":true' <<<"$answer" || { echo "cold admission not allowed: $answer" >&2; exit 1; }
}

pull_zcat() {
  local reg; reg="$(cat "$W/registry")" d="$W/pull"
  rm -rf "$d" && mkdir -p "$d"
  local manifest; manifest="$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/cold/manifests/1")"
  local digests; digests="$(python3 -c 'import json,sys; m=json.load(sys.stdin); print(" ".join(l["digest"] for l in m["layers"]))' <<<"$manifest")"
  for dg in $digests; do curl -sf -o "$d/${dg#sha256:}" "http://$reg/v2/bench/cold/blobs/$dg"; done
  cat "$d"/* | zcat > /dev/null
}

cold() {
  local t0 t1 t2 adm pz
  echo "run,cold_admission_s,pull_plus_zcat_s,ratio"
  for i in $(seq 1 "$RUNS"); do
    t0=$(date +%s.%N); cold_once; t1=$(date +%s.%N); pull_zcat; t2=$(date +%s.%N)
    adm=$(python3 -c "print(f'{$t1-$t0:.3f}')"); pz=$(python3 -c "print(f'{$t2-$t1:.3f}')")
    echo "$i,$adm,$pz,$(python3 -c "print(f'{$adm/$pz:.2f}')")"
  done
}

case "${1:-}" in
  setup) setup ;;
  cached) cached ;;
  cold) cold ;;
  startup) startup ;;
  cold-once) cold_once ;;
  pull-zcat) pull_zcat ;;
  teardown) teardown ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac
