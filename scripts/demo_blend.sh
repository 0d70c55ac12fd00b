#!/usr/bin/env bash
# RAG demo of chunk-level KV reuse (docs/blend.md): SmolLM2-135M, chunks cut from
# ../shared/data/text/, cached in a cachesvc started here. For each prompt it prints TTFT and
# quality (next-token KL and agreement of a greedy continuation with a full prefill) of: full
# prefill, prefix caching, naive reuse, random selection, CacheBlend (15% and controller-chosen)
# and Cache-Craft, side by side. A few minutes on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
MODEL="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$MODEL" ] || ./scripts/fetch_models.sh
TMP="$(mktemp -d /tmp/kvsdemo.XXXXXX)"
SVC_PID=""
cleanup() {
  if [ -n "$SVC_PID" ]; then kill "$SVC_PID" 2>/dev/null || true; wait "$SVC_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "== KVStash blending demo: RAG chunks reused at any position (CacheBlend, Cache-Craft) =="
"$BUILD/cachesvc/cachesvc" --listen "unix://$TMP/svc.sock" --data-dir "$TMP/data" \
  --ready-file "$TMP/ready" --cpu-capacity 1GiB --ssd-capacity 0 --metrics-port 0 \
  --log-level warn &
SVC_PID=$!
for _ in $(seq 1 300); do [ -f "$TMP/ready" ] && break; sleep 0.1; done
[ -f "$TMP/ready" ] || { echo "cachesvc did not start" >&2; exit 1; }
echo "cachesvc on unix://$TMP/svc.sock; chunk caches and Cache-Craft variants are stored there."
echo "Preparing: 12 chunks prefilled alone (CacheBlend's caches), 3 warm-up prompts prefilled in"
echo "full with attention statistics (Cache-Craft's variants). Then 2 new prompts, every method:"
"$BUILD/bench/blend/blend_eval" --model "$MODEL" --target "unix://$TMP/svc.sock" --demo \
  --text-dir "${KVSTASH_SHARED_DATA:-../shared/data}/text" \
  --prompts "${KVSTASH_DEMO_PROMPTS:-2}" --warmup 3 --pool 12 --gen 16 --seed 7 \
  --methods full,prefix,naive,random:0.15,cb:0.15,cbauto,craft:0.25:paper,craft:0.25 2>/dev/null | sed 's/^method/\nmedian over the prompts:\nmethod/'
echo
echo "TTFT: time to the first token, through cachesvc. xFull: TTFT / full prefill's."
echo "recompute: share of token-layers computed. KL: next-token KL(full || method), nats."
echo "greedy: leading tokens of a 16-token greedy continuation equal to the full prefill's; forced:"
echo "steps where the method picks the full prefill's token when both are fed its continuation."
