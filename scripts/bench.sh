#!/usr/bin/env bash
# Runs the benchmarks of every module that has them and writes bench/results/*.json.
# Called by `./run.sh bench` after a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/release
mkdir -p bench/results

# ---- codec (docs/benchmarks-codec.md) ----------------------------------------------------------
if [ -x "$BUILD/bench/codec/codec_bench" ]; then
  echo "[bench] codec: throughput (Google Benchmark)"
  "$BUILD/bench/codec/codec_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
    --benchmark_out=bench/results/codec_bench.json --benchmark_out_format=json
  echo "[bench] codec: sizes and KV error (codec_eval, synthetic SmolLM2-shaped KV)"
  "$BUILD/bench/codec/codec_eval" --synthetic 6 --context-tokens 2048 --speed --controller \
    --out bench/results/codec.json
fi

# ---- connector (docs/benchmarks-connector.md) --------------------------------------------------
MODEL="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -x "$BUILD/bench/connector/connector_bench" ] && [ -f "$MODEL" ]; then
  echo "[bench] connector: TTFT no cache vs CPU-tier hit vs SSD hit (SmolLM2, own cachesvc)"
  "$BUILD/bench/connector/connector_bench" --model "$MODEL" --text ../shared/data/text/botchan.txt \
    --lengths 512,1024,2048 --runs 3 --out bench/results/connector.json
fi
