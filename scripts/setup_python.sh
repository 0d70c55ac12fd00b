#!/usr/bin/env bash
# A private virtualenv for the Python reference checks (numpy, the PyPI gguf reader, Hugging Face
# tokenizers for independent token ids) and plots, and the kvstash package's tests (pytest).
# Lives in $KVSTASH_CACHE/venv; pinned versions; re-runs are no-ops.
set -euo pipefail
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
VENV="$CACHE/venv"
STAMP="$VENV/.kvstash-reqs-v3"
if [ -f "$STAMP" ]; then
  echo "[python] venv present: $VENV"
  exit 0
fi
mkdir -p "$CACHE"
# Debian's interpreter: the one whose headers (python3-dev) the kvstash extension is built
# against (CMake picks /usr/bin/python3 too).
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check numpy==2.4.6 gguf==0.19.0 tokenizers==0.23.3 \
  pytest==9.2.0
touch "$STAMP"
echo "[python] venv ready: $VENV"
