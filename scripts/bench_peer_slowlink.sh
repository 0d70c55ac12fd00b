#!/usr/bin/env bash
# Remote Gets over a rate-limited link, raw against CacheGen- and KVQ-encoded peer fetches
# (docs/benchmarks-transfer.md "Slow links"). For each rate: two network namespaces joined by a
# veth pair with private addresses (10.232.<n>.1/.2, only inside them), a tbf qdisc at that rate
# on both ends, node A in one namespace and bench/service/peer_slowlink_bench (with node B) in
# the other, UCX_TLS=tcp. The namespaces are deleted afterwards (trap), whatever happens.
#
#   scripts/bench_peer_slowlink.sh [--rates 1gbit,10gbit] [--reps N] [--out-dir DIR]
#                                  [--policies raw,cachegen,kvq,auto,kvq+grpc]
# (a policy with +grpc: B fetches over KvStash.Get streams instead of UCX, --peer-data-plane grpc)
# Needs root (ip netns, tc).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
RATES="1gbit,10gbit"
REPS=3
OUT_DIR=bench/results
POLICIES="raw,cachegen,kvq,auto"
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --out-dir) OUT_DIR="$2"; shift 2 ;;
    --policies) POLICIES="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$RATES" =~ ^[0-9]+(mbit|gbit)(,[0-9]+(mbit|gbit))*$ ]] || { echo "--rates: e.g. 1gbit,10gbit" >&2; exit 2; }
[[ "$REPS" =~ ^[1-9][0-9]?$ ]] || { echo "--reps: 1..99" >&2; exit 2; }
[[ "$POLICIES" =~ ^(raw|cachegen|kvq|auto)(\+grpc)?(,(raw|cachegen|kvq|auto)(\+grpc)?)*$ ]] || { echo "--policies: e.g. raw,kvq,kvq+grpc" >&2; exit 2; }
BENCH="$BUILD/bench/service/peer_slowlink_bench"
[ -x "$BENCH" ] || { echo "missing $BENCH: cmake --build --preset release --target peer_slowlink_bench" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (ip netns, tc)" >&2; exit 1; }

TAG=$(( $$ % 100000 ))
NS_A="kvpb-$TAG-a"; NS_B="kvpb-$TAG-b"; VA="pba$TAG"; VB="pbb$TAG"
SUBNET=$(( 1 + $$ % 250 ))
ADDR_A="10.232.$SUBNET.1"; ADDR_B="10.232.$SUBNET.2"
cleanup() {
  ip netns del "$NS_A" 2>/dev/null || true  # removes the veth pair too
  ip netns del "$NS_B" 2>/dev/null || true
}
trap cleanup EXIT

export UCX_TLS=tcp  # UCX would otherwise use shared memory, which crosses namespaces
IFS=, read -r -a RATE_LIST <<< "$RATES"
mkdir -p "$OUT_DIR"
for rate in "${RATE_LIST[@]}"; do
  cleanup
  ip netns add "$NS_A"
  ip netns add "$NS_B"
  ip link add "$VA" type veth peer name "$VB"
  ip link set "$VA" netns "$NS_A"
  ip link set "$VB" netns "$NS_B"
  ip -n "$NS_A" addr add "$ADDR_A/24" dev "$VA"
  ip -n "$NS_B" addr add "$ADDR_B/24" dev "$VB"
  for ns_dev in "$NS_A:$VA" "$NS_B:$VB"; do
    ns=${ns_dev%%:*}; dev=${ns_dev##*:}
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$dev" up
    # burst: at least rate / HZ (250) so that the bucket can sustain the rate; 100 ms of queue.
    case "$rate" in
      *gbit) burst=$(( ${rate%gbit} * 1000000000 / 8 / 100 )) ;;
      *mbit) burst=$(( ${rate%mbit} * 1000000 / 8 / 100 )) ;;
    esac
    [ "$burst" -ge 65536 ] || burst=65536
    ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency 100ms
  done
  echo "[slowlink] $rate: $NS_A ($ADDR_A) <-> $NS_B ($ADDR_B), tbf on both ends; load $(cut -d' ' -f1-3 /proc/loadavg)"
  ip netns exec "$NS_B" timeout 1200 "$BENCH" --a-netns "$NS_A" --a-listen "$ADDR_A:7400" \
    --link "$rate" --reps "$REPS" --policies "$POLICIES" --out "$OUT_DIR/peer_slowlink_$rate.json"
  ip netns exec "$NS_A" tc -s qdisc show dev "$VA" | head -3
done
echo "[slowlink] load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
