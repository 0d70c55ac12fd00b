#!/usr/bin/env bash
# Fails when a public header outside proto/ (<module>/include/**) includes a generated protobuf
# header (*.pb.h) or a proto/ header: wire types stay behind the module boundary (ObjectName is in
# common/object_name.h). `./run.sh test` runs it with the format check; it needs no build.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(git ls-files '*/include/*.h' | grep -v '^proto/' |
  xargs grep -nE '^#include [<"]([^">]*\.pb\.h|kvstash/proto/)' || true)
if [ -n "$bad" ]; then
  echo "check_headers: public headers that include wire types:" >&2
  printf '  %s\n' "$bad" >&2
  exit 1
fi
echo "check_headers: $(git ls-files '*/include/*.h' | grep -vc '^proto/') public headers free of wire types"
