#!/usr/bin/env bash
# A private virtualenv with SGLang (PyPI sglang, pinned) for the KVStash HiCache backend's tests
# (tests/python/test_sglang_backend.py) and docs/connector.md "SGLang".
#
# `pip install sglang==0.5.23` pulls CUDA-only kernels (flashinfer, sgl-kernel, deep-ep, ...) worth
# many GB that cannot run here. The backend needs SGLang's storage and host-pool classes, so the
# venv holds sglang --no-deps plus the pure-Python part of its requirements and PyPI's
# torch==2.14.1 (a CUDA build that runs on CPU): scripts/sglang-requirements.txt pins every package
# as tested. Built on /usr/bin/python3 (3.11), the interpreter the kvstash extension is built for.
#
# Lives in $KVSTASH_CACHE/venv-sglang (about 6 GB); pip's downloads are cached in
# $KVSTASH_CACHE/pip. Idempotent: a stamp naming the pins makes re-runs no-ops; a failed run leaves
# no stamp and the next run resumes. KVSTASH_SKIP_SGLANG=1 skips it (the SGLang tests then report
# themselves skipped).
set -euo pipefail
if [ "${KVSTASH_SKIP_SGLANG:-0}" = 1 ]; then
  echo "[sglang] skipped (KVSTASH_SKIP_SGLANG=1)"
  exit 0
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
VENV="$CACHE/venv-sglang"
SGLANG_VERSION=0.5.23
REQS="$ROOT/scripts/sglang-requirements.txt"
STAMP="$VENV/.kvstash-sglang-$SGLANG_VERSION-$(sha256sum "$REQS" | cut -c1-12)"
if [ -f "$STAMP" ]; then
  echo "[sglang] venv present: $VENV"
  exit 0
fi
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
export PIP_CACHE_DIR="$CACHE/pip"
mkdir -p "$CACHE"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check --progress-bar off)
echo "[sglang] installing torch and SGLang's Python requirements (several GB, minutes)"
# The pins are a complete, closed set (a pip freeze): installing them without dependency
# resolution is exact and avoids pip's resolver backtracking over 120 pins for many minutes.
"${PIP[@]}" --no-deps -r "$REQS"
"${PIP[@]}" --no-deps "sglang==$SGLANG_VERSION"
# The classes the backend and its tests use must import.
"$VENV/bin/python" -W ignore -c "
import sglang.srt.mem_cache.hicache_storage, sglang.srt.mem_cache.pool_host.mha
import sglang.srt.mem_cache.storage.backend_factory"
touch "$STAMP"
echo "[sglang] venv ready: $VENV"
