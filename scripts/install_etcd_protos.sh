#!/usr/bin/env bash
# Puts etcd v3's API protos (etcdserverpb/rpc.proto, mvccpb/kv.proto, authpb/auth.proto) into
# $KVSTASH_CACHE/etcd-protos, from Debian's golang-etcd-server-dev 3.4. No etcd C++ client is
# packaged, so the cluster module generates gRPC stubs from these (cluster/CMakeLists.txt strips
# their gogoproto and google.api.http options at build time). The package is downloaded and
# unpacked, not installed: installing it would pull about 140 Go packages. Idempotent.
set -euo pipefail
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
DEST="$CACHE/etcd-protos"
if [ -f "$DEST/etcd/etcdserver/etcdserverpb/rpc.proto" ] && [ -f "$DEST/etcd/mvcc/mvccpb/kv.proto" ] &&
   [ -f "$DEST/etcd/auth/authpb/auth.proto" ]; then
  echo "[etcd-protos] present in $DEST"
  exit 0
fi
SRC=/usr/share/gocode/src/go.etcd.io/etcd
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ ! -f "$SRC/etcdserver/etcdserverpb/rpc.proto" ]; then
  echo "[etcd-protos] downloading golang-etcd-server-dev (unpacked into $DEST, not installed)"
  (cd "$TMP" && apt-get download golang-etcd-server-dev >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$TMP" && apt-get download golang-etcd-server-dev >/dev/null)
  }
  dpkg -x "$TMP"/golang-etcd-server-dev_*.deb "$TMP/pkg"
  SRC="$TMP/pkg/usr/share/gocode/src/go.etcd.io/etcd"
fi
for f in etcdserver/etcdserverpb/rpc.proto mvcc/mvccpb/kv.proto auth/authpb/auth.proto; do
  mkdir -p "$DEST/etcd/$(dirname "$f")"
  cp "$SRC/$f" "$DEST/etcd/$f"
done
echo "[etcd-protos] copied into $DEST"
