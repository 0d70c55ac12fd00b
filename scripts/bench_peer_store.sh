#!/usr/bin/env bash
# Remote-tier Get end to end, KVStash against Mooncake Store, in one run
# (docs/benchmarks-transfer.md "Remote Get against Mooncake Store"):
#   1. scripts/install_peer_baselines.sh (PyPI mooncake-transfer-engine-non-cuda in a venv under
#      KVSTASH_CACHE; idempotent);
#   2. Mooncake Store: bench/service/mooncake_store_bench.py (mooncake_master with its HTTP
#      metadata server, a holder process whose segment holds the objects, a reader process that
#      pulls them with get_into / batch_get_into over Mooncake's TCP transport);
#   3. KVStash: peer_bench --modes remote_get (a client on cachesvc node B asking for objects that
#      live only on node A; B pulls them over UCX tcp / UCX default / gRPC streams), and the local
#      SSD and CPU hits;
#   4. the table: bench/service/store_table.py -> bench/results/remote_get_vs_mooncake_table.json
#      and markdown on stdout.
# Steps 2-3 run in a private network namespace (unshare -n) whose only interface is lo; every
# process is bounded by timeout.
#
#   scripts/bench_peer_store.sh [--reps N] [--sizes 1MiB,32MiB] [--no-netns]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
REPS=3
SIZES="1MiB,32MiB"
NETNS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --no-netns) NETNS=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$REPS" =~ ^[1-9][0-9]?$ ]] || { echo "--reps: 1..99" >&2; exit 2; }
[[ "$SIZES" =~ ^[0-9]+(KiB|MiB)(,[0-9]+(KiB|MiB))*$ ]] || { echo "--sizes: e.g. 1MiB,32MiB" >&2; exit 2; }
[ -x "$BUILD/bench/service/peer_bench" ] || {
  echo "missing $BUILD/bench/service/peer_bench: ./run.sh build" >&2; exit 1; }

if [ -z "${KVSTASH_PEERS_IN_NETNS:-}" ]; then
  ./scripts/install_peer_baselines.sh
  if [ "$NETNS" -eq 1 ]; then
    command -v unshare >/dev/null || { echo "unshare is needed (or pass --no-netns)" >&2; exit 1; }
    echo "[store] running inside a new network namespace (unshare -n); --no-netns skips it"
    KVSTASH_PEERS_IN_NETNS=1 exec unshare -n bash "$0" --reps "$REPS" --sizes "$SIZES"
  fi
else
  ip link set lo up
fi

VENV="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/peers-venv"
MC_DIR=$("$VENV/bin/python3" -c 'import os,importlib.util as u;print(os.path.dirname(u.find_spec("mooncake").origin))')
bytes_list=$(/usr/bin/python3 -c '
import sys
u = {"KiB": 1 << 10, "MiB": 1 << 20}
print(",".join(str(int(s[:-3]) * u[s[-3:]]) for s in sys.argv[1].split(",")))' "$SIZES")
echo "[store] load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 900 "$VENV/bin/python3" bench/service/mooncake_store_bench.py \
  --master "$MC_DIR/mooncake_master" --sizes "$bytes_list" --batches 1,16 --reps "$REPS" \
  --count 16 --out bench/results/mooncake_store.json
timeout 900 "$BUILD/bench/service/peer_bench" --modes remote_get --get-sizes "$SIZES" \
  --batches 1,16 --reps "$REPS" --out bench/results/remote_get_vs_mooncake.json
echo "[store] load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 bench/service/store_table.py bench/results/remote_get_vs_mooncake.json \
  bench/results/mooncake_store.json bench/results/remote_get_vs_mooncake_table.json
