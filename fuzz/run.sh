#!/usr/bin/env bash
# Runs every fuzz target (as `cargo fuzz list` finds them in fuzz/Cargo.toml, so targets added
# later are included) for a chosen time each, keeps each target's corpus in fuzz/corpus/ and
# what it finds in fuzz/artifacts/<target>/, and prints a summary: target, executions, result.
#
#   fuzz/run.sh                      # every target, 600 s each, one at a time
#   fuzz/run.sh -t 120 -j 2          # 120 s each, two at a time
#   fuzz/run.sh -t 600 scan_archive vault_response
#
# Options: -t SECONDS per target (default 600); -j how many run at once (default 1);
# -n skip the build. Environment: NICE (default 19), FUZZ_TIMEOUT seconds for one input before
# it counts as a hang (default 10), FUZZ_RSS_MB (default 2048).
# Exit status: 0 when every run was clean, 1 when any found something.
set -euo pipefail
cd "$(dirname "$0")"

seconds=600
parallel=1
build=1
while getopts "t:j:n" opt; do
  case "$opt" in
    t) seconds="$OPTARG" ;;
    j) parallel="$OPTARG" ;;
    n) build=0 ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mapfile -t all < <(cargo fuzz list)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
for t in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx "$t" || { echo "no fuzz target named $t (have: ${all[*]})" >&2; exit 2; }
done
[ "$build" = 1 ] && cargo fuzz build

# Per-target libFuzzer options beyond the common ones.
extra_options() {
  case "$1" in
    # Reaches the 16 KiB token limit that refuses oversized tokens.
    jwt_parse) echo "-max_len=20000" ;;
    # Room for a few tar members and their JSON.
    scan_archive | scan_layer) echo "-max_len=65536" ;;
    *) echo "" ;;
  esac
}

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
logs="artifacts/run-$stamp"
mkdir -p "$logs"

run_one() {
  local t="$1" log="$logs/$1.log"
  mkdir -p "corpus/$t" "artifacts/$t"
  set +e
  # shellcheck disable=SC2046 # the extra options are separate words
  nice -n "${NICE:-19}" cargo fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" \
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" $(extra_options "$t") >"$log" 2>&1
  echo $? >"$logs/$t.rc"
  set -e
}

running=0
for t in "${targets[@]}"; do
  echo "fuzzing $t for ${seconds}s (log: fuzz/$logs/$t.log)"
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$parallel" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

found=0
printf '\n%-16s %14s  %s\n' target executions result
for t in "${targets[@]}"; do
  log="$logs/$t.log"
  rc="$(cat "$logs/$t.rc" 2>/dev/null || echo '?')"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  if [ -z "$execs" ]; then
    execs="$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')"
  fi
  if [ "$rc" = 0 ]; then
    result=clean
  else
    found=1
    kind="$(grep -o 'ERROR: libFuzzer: [a-z-]*\|panicked at [^:]*:[0-9]*' "$log" | head -1)"
    unit="$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$log" | head -1)"
    result="found (${kind:-exit $rc}): ${unit:-see the log}"
  fi
  printf '%-16s %14s  %s\n' "$t" "${execs:-?}" "$result"
done
echo "logs: fuzz/$logs/"
exit "$found"
