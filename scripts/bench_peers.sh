#!/usr/bin/env bash
# Node-to-node transfers, KVStash against its peers in one run (docs/benchmarks-transfer.md):
#   1. the peers' baselines: ucx_perftest (UCX tcp and defaults) and Mooncake Transfer Engine's
#      transfer_engine_bench over TCP (scripts/bench_peer_baselines.sh, installed by
#      scripts/install_peer_baselines.sh);
#   2. KVStash: peer_bench (UcxTransport between two processes, memcpy; remote Gets through two
#      cachesvc nodes against local SSD and CPU hits);
#   3. the table with ratios: bench/service/peer_table.py -> bench/results/peer_transfer_table.json
#      and markdown on stdout.
#
#   scripts/bench_peers.sh [--reps N]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
REPS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$BUILD/bench/service/peer_bench" ] || {
  echo "missing $BUILD/bench/service/peer_bench: ./run.sh build" >&2; exit 1; }
./scripts/install_peer_baselines.sh
./scripts/bench_peer_baselines.sh --reps "$REPS" --out bench/results/peer_baselines.json
"$BUILD/bench/service/peer_bench" --reps "$REPS" --out bench/results/peer_transfer.json
python3 bench/service/peer_table.py bench/results/peer_transfer.json \
  bench/results/peer_baselines.json bench/results/peer_transfer_table.json
