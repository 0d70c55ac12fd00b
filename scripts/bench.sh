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
