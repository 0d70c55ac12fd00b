#!/usr/bin/env bash
# vLLM-CPU TTFT with and without KVStash (docs/benchmarks-vllm.md): builds cachesvc and the
# Python extension, sets up the vLLM venv and the converted model, runs scripts/bench_vllm.py.
#   scripts/bench_vllm.sh [--reps N] [--ssd-procs N] [--quick [--lengths 2000]]  -> bench/results/vllm_ttft.json
# One engine process at a time (about 2 GB RSS, 256 MiB KV space).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export KVSTASH_CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
export KVSTASH_SHARED_DATA="${KVSTASH_SHARED_DATA:-$ROOT/../shared/data}"
export CCACHE_DIR="${CCACHE_DIR:-$KVSTASH_CACHE/ccache}" CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
BUILD="$ROOT/build/release"
./scripts/setup_vllm.sh
"$KVSTASH_CACHE/venv-vllm/bin/python" ./scripts/convert_smollm2_hf.py
cmake --preset release -DKVSTASH_MODEL_CACHE="$KVSTASH_CACHE" \
  -DKVSTASH_SHARED_DATA="$KVSTASH_SHARED_DATA" >/dev/null
cmake --build "$BUILD" --target cachesvc kvstash_python -j "${KVSTASH_JOBS:-2}"
mkdir -p bench/results
export KVSTASH_BINARY_DIR="$BUILD" KVSTASH_MODEL_CACHE="$KVSTASH_CACHE"
export PYTHONPATH="$ROOT/python:$BUILD/python${PYTHONPATH:+:$PYTHONPATH}"
exec "$KVSTASH_CACHE/venv-vllm/bin/python" scripts/bench_vllm.py bench/results/vllm_ttft.json "$@"
