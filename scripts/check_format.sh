#!/usr/bin/env bash
# Fails when a tracked C++/CUDA source is not clang-formatted (.clang-format at the root) and
# lists those files. `./run.sh test` runs it first; `./run.sh format` fixes them in place.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null; then
  echo "check_format: clang-format not found (scripts/install_deps.sh installs it)" >&2
  exit 1
fi
n=$(git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | wc -l)
# --dry-run -Werror reports "FILE:LINE:COL: error: code should be clang-formatted" per change.
bad=$(git ls-files -z '*.cc' '*.h' '*.cu' '*.cuh' |
  xargs -0 -n 50 -P "$(nproc)" clang-format --dry-run -Werror 2>&1 |
  sed -n 's/^\(.*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' | sort -u || true)
if [ -n "$bad" ]; then
  echo "check_format: not clang-formatted:" >&2
  printf '  %s\n' $bad >&2
  echo "run ./run.sh format (clang-format -i on those files) and commit the result" >&2
  exit 1
fi
echo "check_format: $n files clang-formatted"
