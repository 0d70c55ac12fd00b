#!/usr/bin/env bash
# CacheGen on real KV caches (docs/benchmarks-codec.md, "Real KV"): sizes, next-token agreement
# and KL against exact KV, codec speed and disk loading, for SmolLM2-135M and stories260K; then the
# plots under docs/img/. About 45 minutes with 60 prompts on the shared 2-core VM (SmolLM2 prefill dominates).
#   ./scripts/bench_codec_quality.sh [smollm2|stories|plot|kvq|kvq-stories|kvq-heldout]...
#   (default: smollm2 stories plot)
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
    kvq|kvq-stories|kvq-heldout)
      # KVQ (docs/codec.md §9) on the same prompts as the CacheGen runs above (same texts, 16
      # training windows so the test windows are the same; KVQ itself trains nothing), and on a
      # held-out text that no tuning saw (Debian's license texts). Results: codec_kvq_quality.json.
      KVQ=(--no-cachegen --kvq L2=L2 --kvq L3=L3 --kvq k4v5=k4/4/4,v5/5 --kvq k5v5=k5/5/5,v5/5
           --kvq L4=L4)
      KOUT=bench/results/codec_kvq_quality.json
      LIC=/usr/share/common-licenses
      case "$step" in
        kvq)
          [ -f "$SMOL" ] || ./scripts/fetch_models.sh
          "$BUILD/bench/codec/codec_quality" --model "$SMOL" --label SmolLM2-135M \
            --text $TEXT/botchan.txt --text $TEXT/wizard_of_oz.txt --text $TEXT/tinyshakespeare.txt \
            --text $TEXT/tinystories_sample.txt --prompts "$PROMPTS" --train-prompts 16 \
            --context-tokens 1024 --gen-tokens 64 --chunk-sizes 256 "${KVQ[@]}" --speed \
            --speed-prompts 4 --reps 3 --out "$KOUT" ;;
        kvq-stories)
          "$BUILD/bench/codec/codec_quality" --model $MODELS/stories260K.bin \
            --tokenizer $MODELS/tok512.bin --label stories260K --text $TEXT/tinystories_sample.txt \
            --prompts 60 --train-prompts 16 --context-tokens 384 --gen-tokens 64 --chunk-sizes 256 \
            "${KVQ[@]}" --out "$KOUT" ;;
        kvq-heldout)
          [ -f "$SMOL" ] || ./scripts/fetch_models.sh
          "$BUILD/bench/codec/codec_quality" --model "$SMOL" --label SmolLM2-135M-heldout-licenses \
            --text $LIC/GPL-3 --text $LIC/GPL-2 --text $LIC/GFDL-1.3 --text $LIC/Apache-2.0 \
            --prompts 12 --train-prompts 1 --context-tokens 1024 --gen-tokens 64 --chunk-sizes 256 \
            --bins cgl2=32/16/16,32/16 --bins cgl3=32/32/32,32/32 "${KVQ[@]}" --out "$KOUT" ;;
      esac ;;
    plot)
      "${PYTHON:-/usr/bin/python3}" scripts/plot_codec_quality.py "$OUT" docs/img ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
