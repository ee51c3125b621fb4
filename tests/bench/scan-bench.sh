#!/usr/bin/env bash
# Scanner benchmark (docs/benchmarks.md): builds a large image with buildah from this machine's
# /usr/share/doc, /usr/share/man and /usr/lib/python3 plus two large files and a few planted
# secrets, exports it gzip-compressed as an OCI archive, then measures `lanyard-broker scan`
# against `zcat` of the same layer blobs and against Kingfisher (PyPI kingfisher-bin).
# Not a test: run by hand after `cargo build -p lanyard-broker --release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
W="$PWD/target/bench"
B=(buildah --root "$W/storage" --runroot "$W/runroot" --storage-driver vfs)
BIN="$PWD/target/release/lanyard-broker"
mkdir -p "$W"

if [[ ! -f "$W/big.oci.tar" ]]; then
  rm -rf "$W/ctx" && mkdir -p "$W/ctx/bin" "$W/ctx/big" "$W/ctx/app"
  cp /bin/busybox "$W/ctx/bin/busybox"
  for t in sh rm mkdir cat; do ln -sf busybox "$W/ctx/bin/$t"; done
  cp -r /usr/share/doc "$W/ctx/doc"; cp -r /usr/share/man "$W/ctx/man"; cp -r /usr/lib/python3 "$W/ctx/python3"
  head -c 48M /dev/urandom > "$W/ctx/big/blob.bin"
  for i in $(seq 1 400000); do echo "$i INFO request served path=/api/v1/items/$i status=200 bytes=$((i * 7 % 9000))"; done > "$W/ctx/big/app.log"
  printf 'GITHUB_TOKEN=ghp_VrRtdVlC1fDBUiTue7fiPgpoiN4au9KWLFbA\n' > "$W/ctx/app/.env"
  printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\n%s\n-----END OPENSSH PRIVATE KEY-----\n' \
    "$(head -c 300 /dev/urandom | base64 -w 70)" > "$W/ctx/app/id_ed25519"
  cat > "$W/ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY bin /bin
COPY doc /usr/share/doc
COPY man /usr/share/man
COPY python3 /usr/lib/python3
COPY big /srv/big
COPY app /app
ENV AWS_ACCESS_KEY_ID=AKIA2IBYYURL7B6KJ6HB
RUN rm /app/.env /app/id_ed25519
DOCKERFILE
  "${B[@]}" bud --isolation chroot --layers -q -t localhost/bench/big:1 "$W/ctx" >/dev/null
  "${B[@]}" push -q --compression-format gzip localhost/bench/big:1 "oci-archive:$W/big.oci.tar:big" >/dev/null
  "${B[@]}" push -q localhost/bench/big:1 "docker-archive:$W/big.docker.tar:localhost/bench/big:1" >/dev/null
  rm -rf "$W/layout" && mkdir -p "$W/layout" && tar -xf "$W/big.oci.tar" -C "$W/layout"
fi

layers=$(python3 -c "
import json,sys
d='$W/layout'
idx=json.load(open(d+'/index.json'))
m=json.load(open(d+'/blobs/sha256/'+idx['manifests'][0]['digest'].split(':')[1]))
print(' '.join(d+'/blobs/sha256/'+l['digest'].split(':')[1] for l in m['layers']))")
echo "layers (compressed): $(du -cb $layers | tail -1 | cut -f1) bytes; uncompressed: $(cat $layers | zcat | wc -c) bytes"
sync
t() { /usr/bin/time -f "%e s wall, %M KiB max RSS" "$@"; }
echo "== zcat of all layers (single core)"; t sh -c "zcat $layers > /dev/null"
echo "== lanyard-broker scan oci-archive (gzip)"; t "$BIN" scan --no-progress "oci-archive:$W/big.oci.tar" > "$W/scan.txt" || true
tail -3 "$W/scan.txt"
echo "== lanyard-broker scan --parallelism 1"; t "$BIN" scan --no-progress --parallelism 1 "oci-archive:$W/big.oci.tar" > /dev/null || true
echo "== lanyard-broker scan docker-archive (uncompressed)"; t "$BIN" scan --no-progress "docker-archive:$W/big.docker.tar" > /dev/null || true

if [[ ! -x "$W/venv/bin/kingfisher" ]]; then
  python3 -m venv "$W/venv" && "$W/venv/bin/pip" install -q kingfisher-bin
fi
# Kingfisher does not read buildah's docker-archive variant ("did not contain Docker image
# layers"); it reads the OCI archive. It extracts layers to a temporary directory on disk.
echo "== kingfisher $("$W/venv/bin/kingfisher" --version 2>/dev/null | head -1) on the OCI archive"
t "$W/venv/bin/kingfisher" scan docker --archive "$W/big.oci.tar" --no-validate --no-update-check --format json > "$W/kingfisher.json" 2> "$W/kingfisher.err" || true
tail -1 "$W/kingfisher.err"
python3 - "$W/kingfisher.json" <<'PY' || true
import json, sys, collections
text = open(sys.argv[1]).read()
data, _ = json.JSONDecoder().raw_decode(text)
rules = collections.Counter()
paths = collections.Counter()
for f in data.get("findings", []):
    rules[f["rule"]["name"]] += 1
    paths[f["finding"]["path"].split(" | ")[-1].split("/")[0]] += 1
print("kingfisher findings:", sum(rules.values()), dict(rules.most_common(12)), "by top dir:", dict(paths.most_common(6)))
PY
