#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ (preset `fuzz`: clang, ASan+UBSan, coverage) and
# runs each for N seconds (default 60) on a scratch copy of its committed corpus.
#
#   ./scripts/fuzz.sh [seconds] [target...]      (./run.sh fuzz [seconds] calls this)
#
# New coverage lands in build/fuzz/work/<target>/; crashes in build/fuzz/findings/<target>/.
# Copy interesting inputs into tests/fuzz/corpus/<target>/ so the replay tests keep them.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
shift || true
JOBS="${KVSTASH_JOBS:-$(nproc)}"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$JOBS" --target fuzz_targets
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for d in tests/fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
status=0
for t in "${targets[@]}"; do
  work="build/fuzz/work/$t"
  findings="build/fuzz/findings/$t"
  mkdir -p "$work" "$findings"
  echo "[fuzz] $t for ${SECS}s"
  if ! "build/fuzz/tests/fuzz/$t" -max_total_time="$SECS" -print_final_stats=1 \
      -artifact_prefix="$findings/" -max_len=65536 "$work" "tests/fuzz/corpus/$t" \
      2>"build/fuzz/$t.log"; then
    echo "[fuzz] $t FAILED: see build/fuzz/$t.log and $findings/" >&2
    status=1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)" "build/fuzz/$t.log" || true
done
exit $status
