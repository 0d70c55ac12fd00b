#!/usr/bin/env bash
# Node-to-node transfers, KVStash against its peers in one run (docs/benchmarks-transfer.md):
#   1. the peers' baselines: ucx_perftest (UCX tcp and defaults; over tcp ucp_get, tag_bw and
#      ucp_am_bw, a second time with the segment sizes UcxTransport sets, so that each bound
#      is the higher of the two) and Mooncake Transfer Engine's transfer_engine_bench over TCP
#      (scripts/bench_peer_baselines.sh, installed by scripts/install_peer_baselines.sh);
#   2. KVStash: peer_bench (UcxTransport between two processes: Fetch, Read and FetchInPlace,
#      repetitions alternated; memcpy; remote Gets through two cachesvc nodes against local SSD
#      and CPU hits);
#   3. the table with ratios: bench/service/peer_table.py -> bench/results/peer_transfer_table.json
#      and markdown on stdout (each UCX tcp path against its own ucx_perftest bound).
#
#   scripts/bench_peers.sh [--reps N]
#   scripts/bench_peers.sh --ucx-1.22 [--reps N]
#     the transport comparison only, on the libucx-cu13 wheel's UCX 1.22: its ucx_perftest, and
#     peer_bench built against it (scripts/build_ucx_cuda.sh peer_bench, build/ucx-cuda); results
#     bench/results/peer_*_ucx122.json
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
REPS=3
UCX122=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --ucx-1.22) UCX122=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
# What UcxTransport::Create sets unless the environment does (transport/src/ucx_transport.cc).
MATCHED_ENV="UCX_TCP_TX_SEG_SIZE=512k UCX_TCP_RX_SEG_SIZE=512k"
R=bench/results
if [ "$UCX122" -eq 1 ]; then
  PREFIX="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/libucx-cu13-1.22.0/libucx"
  BUILD=build/ucx-cuda
  ./scripts/build_ucx_cuda.sh peer_bench
  ./scripts/install_peer_baselines.sh
  for env in "" "$MATCHED_ENV"; do
    out=$R/peer_baselines_ucx122${env:+_matched}.json
    ./scripts/bench_peer_baselines.sh --reps "$REPS" --tools ucx --ucx-transports tcp \
      --ucx-prefix "$PREFIX" --ucx-env "$env" --out "$out"
  done
  "$BUILD/bench/service/peer_bench" --reps "$REPS" --modes transport --tls tcp \
    --out $R/peer_transfer_ucx122.json
  python3 bench/service/peer_table.py $R/peer_transfer_ucx122.json \
    $R/peer_baselines_ucx122.json,$R/peer_baselines_ucx122_matched.json \
    $R/peer_transfer_table_ucx122.json
  exit 0
fi
[ -x "$BUILD/bench/service/peer_bench" ] || {
  echo "missing $BUILD/bench/service/peer_bench: ./run.sh build" >&2; exit 1; }
./scripts/install_peer_baselines.sh
./scripts/bench_peer_baselines.sh --reps "$REPS" --out $R/peer_baselines.json
./scripts/bench_peer_baselines.sh --reps "$REPS" --tools ucx --ucx-transports tcp \
  --ucx-tcp-ops tag_bw,ucp_am_bw --ucx-env "$MATCHED_ENV" --out $R/peer_baselines_matched.json
"$BUILD/bench/service/peer_bench" --reps "$REPS" --out $R/peer_transfer.json
python3 bench/service/peer_table.py $R/peer_transfer.json \
  $R/peer_baselines.json,$R/peer_baselines_matched.json $R/peer_transfer_table.json
