#!/usr/bin/env bash
# Builds KVStash against the CUDA-enabled UCX of the PyPI wheel libucx-cu13 instead of Debian's
# libucx-dev (no CUDA): with it, UcxTransport can register CUDA memory (MemoryKind::kCuda) and
# UCX moves GPU buffers with cuda_copy / cuda_ipc / GPUDirect where the machine has them.
# The wheel ships headers, libraries and lib/cmake/ucx/ucx-config.cmake (relocatable; its ucx.pc
# has a hard-coded prefix, so CMake's config is used). It is unpacked once into
# $KVSTASH_CACHE/libucx-cu13-<version>; the build tree is build/ucx-cuda (RUNPATH points at the
# wheel's lib/).
#
#   scripts/build_ucx_cuda.sh [TARGET ...]     default targets: cachesvc transport_test
#   scripts/build_ucx_cuda.sh --fetch-only     only download and unpack the wheel
# KVSTASH_CMAKE_ARGS adds configure options (the Dockerfile: -DKVSTASH_CUDA=OFF -DKVSTASH_BENCH=OFF).
#
# Exit status 75 (EX_TEMPFAIL) when the wheel is not cached and cannot be downloaded (an offline
# machine), after one line on stderr that says why; scripts/test_ucx_cuda.sh (CI) then skips.
# Any other failure exits non-zero as usual.
# ccache as in run.sh: the same CCACHE_DIR, CCACHE_BASEDIR and CCACHE_NOHASHDIR defaults, so a
# fresh clone reuses the objects of earlier runs. KVSTASH_WERROR=ON compiles with -Werror and,
# as run.sh's build() does, leaves -Werror out of ccache's hash and fails on any compiler warning
# line in the output (kept in build/ucx-cuda/build_output.txt): a cache hit replays a warning
# without failing.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.22.0
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
DEST="$CACHE/libucx-cu13-$VERSION"
export CCACHE_DIR="${CCACHE_DIR:-$CACHE/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
if [ -z "${CCACHE_HASHDIR:-}" ]; then
  export CCACHE_NOHASHDIR=1
fi
if [ ! -f "$DEST/libucx/lib/cmake/ucx/ucx-config.cmake" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "[ucx-cuda] downloading libucx-cu13==$VERSION from PyPI (~45 MB)" >&2
  # Few retries: offline, pip would otherwise retry for minutes before CI could skip.
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --retries 1 --timeout 30 \
    -d "$tmp" "libucx-cu13==$VERSION" 2>"$tmp/pip.err"; then
    # pip ends with "No matching distribution" whatever the cause; name a network failure.
    why=$(grep -v '^[[:space:]]*$' "$tmp/pip.err" | tail -n 1 | cut -c1-160)
    net=$(grep -oE "Failed to establish a new connection: [^')]*|Read timed out|Temporary failure in name resolution" \
      "$tmp/pip.err" | head -n 1 || true)
    [ -z "$net" ] || why="PyPI unreachable ($net); $why"
    echo "[ucx-cuda] cannot download libucx-cu13==$VERSION (not cached in $DEST): ${why:-pip failed}" >&2
    exit 75
  fi
  mkdir -p "$DEST.part"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$(ls "$tmp"/libucx_cu13-*.whl)" "$DEST.part"
  rm -rf "$DEST"
  mv "$DEST.part" "$DEST"
fi
# The wheel is a zip, which keeps no executable bits: its tools (ucx_info, ucx_perftest, used by
# scripts/bench_peer_baselines.sh --ucx-prefix) need them.
chmod u+x "$DEST"/libucx/bin/* 2>/dev/null || true
if [ "${1:-}" = --fetch-only ]; then
  exit 0
fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(cachesvc transport_test)
WERROR="${KVSTASH_WERROR:-OFF}"
cmake -S . -B build/ucx-cuda -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVSTASH_UCX_DIR="$DEST/libucx/lib/cmake/ucx" -DKVSTASH_WERROR="$WERROR" \
  -DKVSTASH_SHARED_DATA="${KVSTASH_SHARED_DATA:-$(pwd)/../shared/data}" \
  -DKVSTASH_MODEL_CACHE="$CACHE" ${KVSTASH_CMAKE_ARGS:-} >/dev/null
if [ "$WERROR" != ON ]; then
  cmake --build build/ucx-cuda -j "${KVSTASH_JOBS:-$(nproc)}" --target "${TARGETS[@]}"
else
  out=build/ucx-cuda/build_output.txt
  CCACHE_IGNOREOPTIONS="${CCACHE_IGNOREOPTIONS:+$CCACHE_IGNOREOPTIONS }-Werror" \
    cmake --build build/ucx-cuda -j "${KVSTASH_JOBS:-$(nproc)}" --target "${TARGETS[@]}" 2>&1 |
    tee "$out"
  if grep -qE ': warning: .*\[-W' "$out"; then
    echo "[ucx-cuda] compiler warnings in build/ucx-cuda (warnings are errors here):" >&2
    grep -E ': warning: .*\[-W' "$out" | sort -u >&2
    exit 1
  fi
fi
echo "[ucx-cuda] built ${TARGETS[*]} in build/ucx-cuda against UCX $VERSION ($DEST/libucx)"
