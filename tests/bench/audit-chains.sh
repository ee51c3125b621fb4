#!/usr/bin/env bash
# Audit with several writers on PostgreSQL (docs/benchmarks.md, "Audit chains"): the two
# designs issue 14 weighs, as the database sees them, with pgbench on a cluster with fsync on.
#
#   per-replica  each writer (a pgbench client = a broker's audit writer task) commits its
#                group of records and updates its own chain's head row — what
#                `audit.sink: store` does (store/postgres.rs, record_audit_lines)
#   global       each writer locks the one head row (SELECT … FOR UPDATE), then inserts its
#                group and moves the head: a serialized global chain (the lock is held
#                through the commit's WAL flush)
#
#   tests/bench/audit-chains.sh          # 1 and 3 writers, groups of 1 and 8 records, 15 s each
#
# Environment: SECONDS_RUN (15), WRITERS ("1 3"), GROUP_SIZES ("1 8"). Needs PostgreSQL 15
# (`apt-get install postgresql`). Not a test: figures are never asserted.
set -euo pipefail
SECONDS_RUN="${SECONDS_RUN:-15}"
WRITERS="${WRITERS:-1 3}"
GROUPS_OF="${GROUP_SIZES:-1 8}"
BIN=/usr/lib/postgresql/15/bin
W=$(mktemp -d /tmp/lanyard-audit-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$W"
as_pg "$BIN/initdb" -D "$W/data" -U test --auth=trust -E UTF8 --no-locale -N >/dev/null
as_pg "$BIN/pg_ctl" -D "$W/data" -l "$W/log" -o "-p $PORT -k $W -c listen_addresses=127.0.0.1" -w start >/dev/null
trap 'as_pg "$BIN/pg_ctl" -D "$W/data" -m immediate stop >/dev/null 2>&1; rm -rf "$W"' EXIT
PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U test -d postgres -qAt)
"${PSQL[@]}" -c "SHOW fsync" | sed 's/^/fsync: /'
"${PSQL[@]}" <<'SQL'
CREATE TABLE chains (epoch BIGINT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT);
CREATE TABLE records (epoch BIGINT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (epoch, seq));
INSERT INTO chains SELECT g, 0, NULL FROM generate_series(0, 63) g;
SQL
# A record's line is ≈ 600 bytes (an issuance's record as the broker writes it).
cat >"$W/per-replica.sql" <<'SQL'
BEGIN;
UPDATE chains SET seq = seq + :g::bigint, hash = md5(random()::text) WHERE epoch = :client_id RETURNING seq \gset h_
INSERT INTO records SELECT :client_id, :h_seq::bigint - :g::bigint + i, md5(i::text), repeat('x', 600) FROM generate_series(1, :g) i;
COMMIT;
SQL
cat >"$W/global.sql" <<'SQL'
BEGIN;
SELECT seq FROM chains WHERE epoch = 63 FOR UPDATE \gset h_
INSERT INTO records SELECT 63, :h_seq::bigint + i, md5(i::text), repeat('x', 600) FROM generate_series(1, :g) i;
UPDATE chains SET seq = seq + :g::bigint, hash = md5(random()::text) WHERE epoch = 63;
COMMIT;
SQL
printf '%-12s %7s %6s %12s %12s %10s\n' design writers group 'groups/s' 'records/s' 'avg ms'
for design in per-replica global; do
  for w in $WRITERS; do
    for g in $GROUPS_OF; do
      out=$("$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U test -n -M prepared -c "$w" -j "$w" -T "$SECONDS_RUN" -D g="$g" -f "$W/$design.sql" postgres 2>&1)
      [ -n "${DEBUG:-}" ] && echo "$out"
      tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
      lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
      printf '%-12s %7s %6s %12.0f %12.0f %10s\n' "$design" "$w" "$g" "$tps" "$(echo "$tps * $g" | bc)" "$lat"
    done
  done
done
