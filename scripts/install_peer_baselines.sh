#!/usr/bin/env bash
# Installs the third-party tools that scripts/bench_peer_baselines.sh measures KVStash's
# node-to-node transfers against (docs/peer-baselines.md):
#   * ucx_perftest from Debian's ucx-utils (UCX 1.13, the same UCX as libucx-dev/libucx0);
#   * Mooncake Transfer Engine (transfer_engine_bench, mooncake_master) from the PyPI wheel
#     mooncake-transfer-engine-non-cuda, pinned, in its own venv:
#       "${KVSTASH_CACHE:-$HOME/.cache/kvstash}/peers-venv"
# Idempotent: a stamp file in the venv records what was installed; a re-run with the same
# pins and a present ucx_perftest does nothing. Needs root (or sudo) only for the apt step.
#
#   scripts/install_peer_baselines.sh            install what is missing
#   scripts/install_peer_baselines.sh --force    reinstall the venv even if the stamp matches
set -euo pipefail

MOONCAKE_PKG="mooncake-transfer-engine-non-cuda"
MOONCAKE_VERSION="${MOONCAKE_VERSION:-0.3.13.post1}"
APT_PKG="ucx-utils"
# Shared libraries the wheel's binaries load from the system (the rest is bundled in the wheel).
APT_RUNTIME=(libnuma1 libibverbs1 libcurl4 libnl-route-3-200 libstdc++6)
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
VENV="$CACHE/peers-venv"
STAMP="$VENV/.kvstash-peers-stamp"
PY="${PYTHON:-/usr/bin/python3}"
WANT_STAMP="$MOONCAKE_PKG==$MOONCAKE_VERSION python=$("$PY" -c 'import sys;print("%d.%d"%sys.version_info[:2])')"

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "[peers] unknown argument: $1 (use --force or nothing)" >&2; exit 2 ;;
esac

log() { echo "[peers] $*"; }

# --- (a) ucx_perftest (Debian ucx-utils) and the wheel's system libraries ----------------
missing=()
for p in "$APT_PKG" "${APT_RUNTIME[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && command -v ucx_perftest >/dev/null 2>&1; then
  log "$APT_PKG $(dpkg-query -W -f='${Version}' "$APT_PKG") present ($(command -v ucx_perftest)); runtime libraries present"
else
  [ ${#missing[@]} -gt 0 ] || missing=("$APT_PKG")
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { log "need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  command -v ucx_perftest >/dev/null || { log "ucx_perftest still missing after installing $APT_PKG" >&2; exit 1; }
  log "$APT_PKG $(dpkg-query -W -f='${Version}' "$APT_PKG") installed"
fi
ucx_ver=$(ucx_info -v 2>/dev/null | sed -n 's/^# Version //p' | head -1)
case "$ucx_ver" in
  1.13.*) ;;
  *) log "warning: UCX is '${ucx_ver:-unknown}', the baselines were set up for 1.13" >&2 ;;
esac

# --- (b) Mooncake Transfer Engine wheel in its own venv ----------------------------------
if [ "$force" -eq 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ] &&
   [ -x "$VENV/bin/transfer_engine_bench" ]; then
  log "venv $VENV already has $MOONCAKE_PKG==$MOONCAKE_VERSION (stamp matches); nothing to do"
else
  "$PY" -c 'import venv' 2>/dev/null || { log "$PY lacks venv: apt-get install python3-venv" >&2; exit 1; }
  if [ -d "$VENV" ] && { [ "$force" -eq 1 ] || [ ! -x "$VENV/bin/python3" ]; }; then
    log "removing old venv $VENV"
    rm -rf "$VENV"
  fi
  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/python3" ]; then
    log "creating venv $VENV with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
  fi
  log "installing $MOONCAKE_PKG==$MOONCAKE_VERSION from PyPI"
  "$VENV/bin/python3" -m pip install -q --disable-pip-version-check "$MOONCAKE_PKG==$MOONCAKE_VERSION"
  [ -x "$VENV/bin/transfer_engine_bench" ] ||
    { log "the wheel did not install transfer_engine_bench in $VENV/bin" >&2; exit 1; }
  echo "$WANT_STAMP" > "$STAMP"
  log "installed $MOONCAKE_PKG==$MOONCAKE_VERSION"
fi

# Report where the real binaries are (bin/transfer_engine_bench is a Python wrapper that
# execs site-packages/mooncake/transfer_engine_bench) and that their libraries resolve.
pkgdir=$("$VENV/bin/python3" -c 'import os,importlib.util as u;print(os.path.dirname(u.find_spec("mooncake").origin))')
for b in transfer_engine_bench mooncake_master; do
  [ -x "$pkgdir/$b" ] || chmod a+x "$pkgdir/$b" 2>/dev/null || true
  if ldd "$pkgdir/$b" 2>/dev/null | grep -q "not found"; then
    log "warning: $pkgdir/$b has unresolved libraries:" >&2
    ldd "$pkgdir/$b" | grep "not found" >&2
  else
    log "ok: $pkgdir/$b"
  fi
done
log "done"
