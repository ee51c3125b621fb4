# Sourced by test.sh: makes sure PostgreSQL's server binaries are installed (Debian's
# `postgresql` package) and exports where they are. Each test starts its own throwaway
# cluster on a free loopback port (tests/support's `Postgres`) and removes it when it ends.
#
#   LANYARD_PG_BIN  directory holding initdb, pg_ctl, postgres and psql

pg_bin_dir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/psql" ]] && { echo "$d"; return 0; }
  done
  return 1
}
if ! pg_bin_dir >/dev/null; then
  echo "tests/peers/postgres.sh: installing PostgreSQL (Debian package postgresql)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
LANYARD_PG_BIN="$(pg_bin_dir)" || { echo "tests/peers/postgres.sh: no PostgreSQL binaries" >&2; return 1; }
export LANYARD_PG_BIN
unset -f pg_bin_dir
