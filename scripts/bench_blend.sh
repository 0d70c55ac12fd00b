#!/usr/bin/env bash
# Blending evaluation (docs/blend.md): starts cachesvc on a temporary unix socket, runs
# blend_eval on N RAG prompts (default 100; every method through cachesvc), the eviction
# simulator, and draws the plots.
#
#   scripts/bench_blend.sh [N] [extra blend_eval flags, e.g. --resume, --methods LIST]
#   BLEND_NAME=blend_craft_nc scripts/bench_blend.sh 100 --methods cb:0.15,craft:0.25,...
#
# Writes bench/results/blend.json, bench/results/blend_progress.jsonl (per prompt, resumable),
# bench/results/blend_eviction.json, docs/img/blend_*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
# BLEND_NAME: results go to bench/results/$BLEND_NAME.json and ${BLEND_NAME}_progress.jsonl; any
# name but "blend" skips the eviction simulator and the plots. EXTRA_RUNS: such names whose
# methods the plots add (default: the Cache-Craft runs of docs/blend.md).
NAME="${BLEND_NAME:-blend}"
EXTRA_RUNS="${EXTRA_RUNS:-blend_craft_nc blend_craft_nc_low}"
N="${1:-100}"
shift || true
MODEL="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TMP="$(mktemp -d /tmp/kvsblend.XXXXXX)"
SVC_PID=""
cleanup() {
  if [ -n "$SVC_PID" ]; then kill "$SVC_PID" 2>/dev/null || true; wait "$SVC_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

"$BUILD/cachesvc/cachesvc" --listen "unix://$TMP/svc.sock" --data-dir "$TMP/data" \
  --ready-file "$TMP/ready" --cpu-capacity 3GiB --ssd-capacity 8GiB --metrics-port 0 \
  --log-level warn &
SVC_PID=$!
for _ in $(seq 1 300); do [ -f "$TMP/ready" ] && break; sleep 0.1; done
[ -f "$TMP/ready" ] || { echo "cachesvc did not start" >&2; exit 1; }

mkdir -p bench/results docs/img
"$BUILD/bench/blend/blend_eval" --model "$MODEL" --target "unix://$TMP/svc.sock" \
  --text-dir "${KVSTASH_SHARED_DATA:-../shared/data}/text" --prompts "$N" --out "bench/results/$NAME.json" --progress "bench/results/${NAME}_progress.jsonl" "$@"
[ "$NAME" = blend ] || exit 0  # a further run over the same prompts: see the plot step below
"$BUILD/bench/blend/eviction_sim" --out bench/results/blend_eviction.json
# Runs of more methods over the same prompts (BLEND_NAME=...) join the quality plots.
MORE=()
for extra in $EXTRA_RUNS; do
  [ -f "bench/results/$extra.json" ] && MORE+=("bench/results/$extra.json" "bench/results/${extra}_progress.jsonl")
done
"${PYTHON:-/usr/bin/python3}" bench/blend/plot_blend.py bench/results/blend.json bench/results/blend_progress.jsonl \
  bench/results/blend_eviction.json docs/img "${MORE[@]}"
