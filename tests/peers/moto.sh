# Sourced by test.sh: installs moto_server (PyPI `moto[server]`, a real STS endpoint for tests)
# and boto3 into a venv under target/peers/, and exports where they are. The tests start
# their own moto_server on a free loopback port and stop it when they end.
#
#   LANYARD_MOTO_SERVER  path of the moto_server binary
#   LANYARD_MOTO_PYTHON  the venv's python (has boto3)
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY  dummy keys for the broker's own credential
#       chain (moto accepts any); AWS_EC2_METADATA_DISABLED keeps the chain off the network.

moto_venv="$PWD/target/peers/moto-venv"
if [[ ! -x "$moto_venv/bin/moto_server" || ! -x "$moto_venv/bin/python" ]] \
  || ! "$moto_venv/bin/python" -c 'import boto3, moto' >/dev/null 2>&1; then
  echo "tests/peers/moto.sh: installing moto[server] and boto3 into $moto_venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$moto_venv"
  mkdir -p "$(dirname "$moto_venv")"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6' 'boto3>=1.34,<2'
fi
export LANYARD_MOTO_SERVER="$moto_venv/bin/moto_server"
export LANYARD_MOTO_PYTHON="$moto_venv/bin/python"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-lanyard-test-key}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-lanyard-test-secret}"
export AWS_EC2_METADATA_DISABLED=true
unset moto_venv
