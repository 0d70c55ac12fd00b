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
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.22.0
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
DEST="$CACHE/libucx-cu13-$VERSION"
if [ ! -f "$DEST/libucx/lib/cmake/ucx/ucx-config.cmake" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "[ucx-cuda] downloading libucx-cu13==$VERSION from PyPI (~45 MB)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "libucx-cu13==$VERSION"
  mkdir -p "$DEST.part"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$(ls "$tmp"/libucx_cu13-*.whl)" "$DEST.part"
  rm -rf "$DEST"
  mv "$DEST.part" "$DEST"
fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(cachesvc transport_test)
cmake -S . -B build/ucx-cuda -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVSTASH_UCX_DIR="$DEST/libucx/lib/cmake/ucx" \
  -DKVSTASH_SHARED_DATA="${KVSTASH_SHARED_DATA:-$(pwd)/../shared/data}" \
  -DKVSTASH_MODEL_CACHE="$CACHE" >/dev/null
cmake --build build/ucx-cuda -j "${KVSTASH_JOBS:-$(nproc)}" --target "${TARGETS[@]}"
echo "[ucx-cuda] built ${TARGETS[*]} in build/ucx-cuda against UCX $VERSION ($DEST/libucx)"
