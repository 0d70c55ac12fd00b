#!/usr/bin/env bash
# KVStash benchmarks. `./run.sh bench [NAME...]` builds build/release and runs this from the repo
# root; with no NAME every benchmark runs. Each writes bench/results/<name>.json and prints its
# tables; docs/benchmarks.md holds the reference figures and the exact commands.
#
#   service   data paths of cachesvc (shared memory, gRPC streams) vs memcpy and Redis
#   ssd       SSD tier vs fio (storage)
#   kernels   paged KV gather/scatter and RoPE shift (Google Benchmark)
#   codec     CacheGen throughput and sizes (Google Benchmark + codec_eval on synthetic KV)
#   engine    reference engine prefill/decode tokens/s on SmolLM2
#   connector TTFT without cache vs CPU-tier and SSD hits through cachesvc (SmolLM2)
#   blend     CacheBlend / Cache-Craft evaluation on 100 RAG prompts, eviction simulator
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${KVSTASH_BUILD:-build/release}"
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
SMOLLM2="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p bench/results

log() { printf '\033[1m[bench]\033[0m %s\n' "$*"; }

bench_service() {
  log "service data paths -> bench/results/service_paths.json"
  if [ -x "$BUILD/bench/service/service_paths_bench" ]; then
    "$BUILD/bench/service/service_paths_bench" --out bench/results/service_paths.json
  else
    log "skipped: service_paths_bench was not built (hiredis, libhiredis-dev, not found)"
  fi
  log "the put's copy into the arena vs memcpy -> bench/results/put_copy.json"
  "$BUILD/bench/service/put_copy_bench" --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true --benchmark_out=bench/results/put_copy.json \
    --benchmark_out_format=json
}

bench_ssd() {
  log "SSD tier vs fio -> bench/results/ssd_tier.json"
  "$BUILD/bench/storage/ssd_tier_bench" --out bench/results/ssd_tier.json
}

bench_kernels() {
  log "kernels -> bench/results/kernels.json"
  "$BUILD/bench/kernels/kernels_bench" --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true --benchmark_out=bench/results/kernels.json \
    --benchmark_out_format=json
}

bench_codec() {
  log "codec throughput -> bench/results/codec_bench.json"
  "$BUILD/bench/codec/codec_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
    --benchmark_out=bench/results/codec_bench.json --benchmark_out_format=json
  log "codec sizes and KV error (synthetic SmolLM2-shaped KV) -> bench/results/codec.json"
  "$BUILD/bench/codec/codec_eval" --synthetic 6 --context-tokens 2048 --speed --controller \
    --out bench/results/codec.json
}

bench_connector() {
  log "connector TTFT: no cache vs CPU-tier hit vs SSD hit -> bench/results/connector.json"
  "$BUILD/bench/connector/connector_bench" --model "$SMOLLM2" --text "${KVSTASH_SHARED_DATA:-../shared/data}/text/botchan.txt" \
    --lengths 512,1024,2048 --runs 3 --out bench/results/connector.json
}

bench_blend() {
  log "blending evaluation (100 RAG prompts, all methods) + eviction simulator -> bench/results/blend*.json"
  ./scripts/bench_blend.sh "${KVSTASH_BLEND_PROMPTS:-100}"
}

bench_engine() {
  log "engine prefill/decode -> bench/results/engine.json"
  "$BUILD/bench/engine/engine_bench" --model "$SMOLLM2" --text "${KVSTASH_SHARED_DATA:-../shared/data}/text/botchan.txt" \
    --runs 3 --out bench/results/engine.json
}

ALL=(service ssd kernels codec engine connector blend)
selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${ALL[@]}")
for name in "${selected[@]}"; do
  case "$name" in
    service) bench_service ;;
    ssd) bench_ssd ;;
    kernels) bench_kernels ;;
    codec) bench_codec ;;
    engine) bench_engine ;;
    connector) bench_connector ;;
    blend) bench_blend ;;
    *)
      echo "unknown benchmark: $name (known: ${ALL[*]})" >&2
      exit 2
      ;;
  esac
done
log "plots -> docs/img/bench_*.png"
"${PYTHON:-/usr/bin/python3}" scripts/plot_benchmarks.py bench/results docs/img
log "done"
