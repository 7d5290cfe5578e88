#!/usr/bin/env bash
# Copies the alert rules and the Grafana dashboards into the Helm chart, which ships them
# as a PrometheusRule and as ConfigMaps for Grafana's sidecar. The originals are in
# deploy/; tests/observability/run.sh fails while a copy differs from its original.
#
#   deploy/prometheus/alerts.yaml     -> helm/dynamo/files/alerts.yaml
#   deploy/grafana/overview.json      -> helm/dynamo/files/dashboards/overview.json
#   deploy/grafana/node.json          -> helm/dynamo/files/dashboards/node.json
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$repo/helm/dynamo/files/dashboards"
cp "$repo/deploy/prometheus/alerts.yaml" "$repo/helm/dynamo/files/alerts.yaml"
for d in overview node; do
    cp "$repo/deploy/grafana/$d.json" "$repo/helm/dynamo/files/dashboards/$d.json"
done
echo "helm/dynamo/files: alerts.yaml and dashboards/{overview,node}.json updated from deploy/"
