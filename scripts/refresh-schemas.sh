#!/usr/bin/env bash
# Refresh the vendored upstream CRD schemas in third_party/crd-schemas from given upstream tags.
#   scripts/refresh-schemas.sh [KUBERAY_REF] [PROMETHEUS_OPERATOR_REF]     (make schemas)
# Defaults are the versions vendored now. Needs network access to GitHub, which CI and the
# tests never need: they read only the committed copies. Review the diff, then rerun `make test`
# (the golden RayJobs and the chart are validated against these files).
set -euo pipefail
kuberay=${1:-v1.7.0}
prom=${2:-v0.93.0}
dest=$(cd "$(dirname "$0")/.." && pwd)/third_party/crd-schemas
raw=https://raw.githubusercontent.com

fetch() {  # fetch REPO REF PATH DEST_FILE
  curl -fsSL --retry 3 "$raw/$1/$2/$3" -o "$4.new" && mv "$4.new" "$4"
  echo "  $4 <- $1@$2:$3"
}

fetch ray-project/kuberay "$kuberay" ray-operator/config/crd/bases/ray.io_rayjobs.yaml \
  "$dest/ray.io_rayjobs.yaml"
fetch ray-project/kuberay "$kuberay" LICENSE "$dest/KUBERAY-LICENSE"
for kind in servicemonitors podmonitors prometheusrules; do
  fetch prometheus-operator/prometheus-operator "$prom" \
    "example/prometheus-operator-crd-full/monitoring.coreos.com_$kind.yaml" \
    "$dest/monitoring.coreos.com_$kind.yaml"
done
fetch prometheus-operator/prometheus-operator "$prom" LICENSE "$dest/PROMETHEUS-OPERATOR-LICENSE"
sed -i -E "s/^(\| ray\.io_rayjobs\.yaml \|[^|]*\|) [^|]* \|/\1 $kuberay |/; \
  s/^(\| monitoring[^|]*\|[^|]*\|) [^|]* \|/\1 $prom |/" "$dest/README.md"
echo "refreshed: KubeRay $kuberay, prometheus-operator $prom (README updated; check git diff)"
