#!/usr/bin/env bash
# Builds the cachesvc OCI image without a Docker engine: a minimal Debian 12 root from
# debootstrap (cached in KVSTASH_CACHE), the built cachesvc and kvstash binaries with the shared
# libraries they link (copied from this Debian 12 build host), committed with buildah (vfs
# storage, chroot isolation) and written as an OCI archive. Needs root, debootstrap and buildah
# (apt-get install buildah debootstrap). The Dockerfile is the same image for a Docker engine.
#   scripts/build_image.sh [BUILD_DIR] [OUT.tar]
set -euo pipefail
cd "$(dirname "$0")/.."
B="${1:-build/release}"
OUT="${2:-$B/kvstash-cachesvc.oci.tar}"
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
BASE="$CACHE/rootfs-bookworm-minbase"
TAG="kvstash/cachesvc:0.1.0"
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { echo "[image] $tool missing: apt-get install $tool" >&2; exit 1; }
done
if [ ! -x "$BASE/bin/sh" ]; then
  echo "[image] debootstrap --variant=minbase bookworm -> $BASE"
  debootstrap --variant=minbase bookworm "$BASE.tmp" http://deb.debian.org/debian
  rm -rf "$BASE.tmp/var/cache/apt/archives/"*.deb "$BASE.tmp/var/lib/apt/lists/"*
  mv "$BASE.tmp" "$BASE"
fi
ROOT="$(mktemp -d /tmp/kvstash-image.XXXXXX)"
trap 'rm -rf "$ROOT"; [ -n "${CTR:-}" ] && buildah rm "$CTR" >/dev/null 2>&1 || true' EXIT
cp -a "$BASE/." "$ROOT/"
mkdir -p "$ROOT/usr/local/lib/kvstash" "$ROOT/run/kvstash" "$ROOT/var/lib/kvstash"
install -m 0755 "$B/cachesvc/cachesvc" "$B/cli/kvstash" "$ROOT/usr/local/bin/"
# Debug info stays in the build tree (build/ucx-cuda is RelWithDebInfo: 90 MB for cachesvc);
# symbols stay, so a backtrace still names functions.
strip --strip-debug "$ROOT/usr/local/bin/cachesvc" "$ROOT/usr/local/bin/kvstash"
# Libraries the root lacks (the base has libc and friends of the same Debian release).
ldd "$B/cachesvc/cachesvc" "$B/cli/kvstash" | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
  [ -e "$ROOT$lib" ] || cp -L "$lib" "$ROOT/usr/local/lib/kvstash/"
done
# UCX loads its transport modules (cma, ib, rdmacm; cuda_* in the wheel's UCX) from the ucx/
# folder beside libucs; ldd does not list them. Copy that folder next to the copied libucs, and
# the libraries the modules link (verbs, netlink), so RDMA and CMA work where the pod has them.
# A module whose device library is absent (the wheel's cuda modules without a driver) is skipped
# by UCX at start-up.
ucs=$(ldd "$B/cachesvc/cachesvc" | awk '/libucs\.so/{print $3}')
if [ -n "$ucs" ] && [ -d "$(dirname "$(readlink -f "$ucs")")/ucx" ]; then
  moddir="$(dirname "$(readlink -f "$ucs")")/ucx"
  mkdir -p "$ROOT/usr/local/lib/kvstash/ucx"
  cp -a "$moddir"/*.so* "$ROOT/usr/local/lib/kvstash/ucx/"
  ldd "$moddir"/*.so.0 | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
    [ -e "$ROOT$lib" ] || [ -e "$ROOT/usr/local/lib/kvstash/$(basename "$lib")" ] ||
      cp -L "$lib" "$ROOT/usr/local/lib/kvstash/"
  done
  # libibverbs finds its device drivers (mlx5, efa, ...) through /etc/libibverbs.d at run time.
  if [ -e "$ROOT/usr/local/lib/kvstash/libibverbs.so.1" ] && [ -d /etc/libibverbs.d ]; then
    mkdir -p "$ROOT/etc/libibverbs.d" "$ROOT/usr/lib/x86_64-linux-gnu/libibverbs"
    cp -a /etc/libibverbs.d/. "$ROOT/etc/libibverbs.d/"
    cp -a /usr/lib/x86_64-linux-gnu/libibverbs/. "$ROOT/usr/lib/x86_64-linux-gnu/libibverbs/"
  fi
  echo "[image] UCX modules from $moddir: $(cd "$moddir" && ls ./*.so.0 | sed 's#^\./##' | tr '\n' ' ')"
fi
echo /usr/local/lib/kvstash >"$ROOT/etc/ld.so.conf.d/kvstash.conf"
chroot "$ROOT" ldconfig
chroot "$ROOT" /usr/local/bin/cachesvc --version  # every library resolves inside the root
# /run/kvstash and /var/lib/kvstash are mount points: the chart's init container gives the
# mounted directories to uid 65532.
CTR=$(buildah from scratch)
buildah copy --quiet "$CTR" "$ROOT/" /
buildah config --entrypoint '["cachesvc"]' --user 65532:65532 \
  --label org.opencontainers.image.source=kvstash --label org.opencontainers.image.version=0.1.0 \
  "$CTR"
buildah commit --quiet --format oci "$CTR" "$TAG"
rm -f "$OUT"
buildah push --quiet "$TAG" "oci-archive:$OUT:$TAG"
echo "[image] $TAG -> $OUT ($(du -h "$OUT" | cut -f1))"
