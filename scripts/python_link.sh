#!/usr/bin/env bash
# Makes `import kvstash` work in a venv from this checkout, without copying anything: writes a
# kvstash-checkout.pth into the venv's site-packages naming <checkout>/python (the pure-Python
# package) and <build>/python (the native extension CMake builds). Re-run after moving the
# checkout; a later run from another checkout replaces the link.
#
#   scripts/python_link.sh [build dir, default build/release] [venv, default $KVSTASH_CACHE/venv]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build/release}" && pwd)"
VENV="${2:-${KVSTASH_CACHE:-$HOME/.cache/kvstash}/venv}"
[ -x "$VENV/bin/python" ] || { echo "no venv at $VENV (scripts/setup_python.sh makes one)" >&2; exit 1; }
ls "$BUILD"/python/kvstash/_native*.so >/dev/null 2>&1 ||
  echo "[python] note: $BUILD/python/kvstash has no _native extension yet (build target kvstash_python)"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n%s\n' "$ROOT/python" "$BUILD/python" >"$SITE/kvstash-checkout.pth"
echo "[python] $SITE/kvstash-checkout.pth -> $ROOT/python, $BUILD/python"
