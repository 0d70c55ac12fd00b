#!/usr/bin/env bash
# CacheGen on real KV caches (docs/benchmarks-codec.md, "Real KV"): sizes, next-token agreement
# and KL against exact KV, codec speed and disk loading, for SmolLM2-135M and stories260K; then the
# plots under docs/img/. About 45 minutes with 60 prompts on the shared 2-core VM (SmolLM2 prefill dominates).
#   ./scripts/bench_codec_quality.sh [smollm2|stories|plot]...   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/release
OUT=bench/results/codec_quality.json
TEXT=${KVSTASH_SHARED_DATA:-../shared/data}/text
MODELS=${KVSTASH_SHARED_DATA:-../shared/data}/models
SMOL=${KVSTASH_MODEL_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf
PROMPTS=${KVSTASH_CODEC_PROMPTS:-50}
# Optional (KVSTASH_CODEC_EXTRA_BINS=1): explicit bins (K groups 1/2/3, V groups 1/2 of levels.h)
# beside levels 1-3, to see where the bytes go; each adds an evaluation per prompt.
BINS=()
if [ "${KVSTASH_CODEC_EXTRA_BINS:-0}" = 1 ]; then
  BINS=(--bins k32v16=32/32/32,16/16 --bins k48v16=48/48/48,16/16 --bins k64v32=64/64/64,32/32
        --bins k64v64=64/64/64,64/64)
fi
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(smollm2 stories plot)
for step in "${steps[@]}"; do
  case "$step" in
    smollm2)
      [ -f "$SMOL" ] || ./scripts/fetch_models.sh
      "$BUILD/bench/codec/codec_quality" --model "$SMOL" --label SmolLM2-135M \
        --text $TEXT/botchan.txt --text $TEXT/wizard_of_oz.txt --text $TEXT/tinyshakespeare.txt \
        --text $TEXT/tinystories_sample.txt --prompts "$PROMPTS" --train-prompts 16 --context-tokens 1024 \
        --gen-tokens 64 --chunk-sizes 256,1024 ${BINS[@]+"${BINS[@]}"} --speed --speed-prompts 4 \
        --ssd-dir "$BUILD/codec_quality_ssd" --out "$OUT" ;;
    stories)
      "$BUILD/bench/codec/codec_quality" --model $MODELS/stories260K.bin \
        --tokenizer $MODELS/tok512.bin --label stories260K --text $TEXT/tinystories_sample.txt \
        --prompts 60 --train-prompts 16 --context-tokens 384 --gen-tokens 64 --chunk-sizes 256 \
        ${BINS[@]+"${BINS[@]}"} --out "$OUT" ;;
    plot)
      "${PYTHON:-/usr/bin/python3}" scripts/plot_codec_quality.py "$OUT" docs/img ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
