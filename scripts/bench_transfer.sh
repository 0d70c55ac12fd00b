#!/usr/bin/env bash
# Encoded transfers over links of several bandwidths (docs/benchmarks-service.md, "Encoded
# transfers"). For each rate, runs bench/service/transfer_bench inside a new network namespace
# whose loopback is shaped with tc tbf (needs root, or unshare + CAP_NET_ADMIN); "none" leaves
# loopback unshaped. Writes bench/results/transfer_<rate>.json.
#
#   scripts/bench_transfer.sh [RATE ...]     default: 100mbit 1gbit 10gbit none
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(100mbit 1gbit 10gbit none)
for bin in "$BUILD/bench/service/transfer_bench" "$BUILD/cachesvc/cachesvc"; do
  [ -x "$bin" ] || { echo "missing $bin: cmake --build --preset release --target transfer_bench" >&2; exit 1; }
done
command -v tc >/dev/null || { echo "tc (iproute2) is needed" >&2; exit 1; }
for rate in "${RATES[@]}"; do
  [[ "$rate" =~ ^([1-9][0-9]*(mbit|gbit)|none)$ ]] ||
    { echo "bad rate '$rate': give N mbit or N gbit (e.g. 100mbit, 10gbit) or none" >&2; exit 2; }
done
mkdir -p bench/results
for rate in "${RATES[@]}"; do
  echo "== link: $rate"
  # burst: about 1 ms of traffic at the rate, at least 64 KiB.
  unshare -n bash -euo pipefail -c '
    rate="$1"; bench="$2"; svc="$3"
    ip link set lo mtu 1500 up  # an Ethernet-sized MTU, as between nodes
    if [ "$rate" != none ]; then
      bits=$(echo "$rate" | sed -e "s/gbit$/000000000/" -e "s/mbit$/000000/")
      burst=$(( bits / 8 / 1000 )); [ "$burst" -ge 65536 ] || burst=65536
      tc qdisc add dev lo root tbf rate "$rate" burst "$burst" latency 100ms
    fi
    "$bench" --cachesvc "$svc" --label "$rate" --out "bench/results/transfer_$rate.json"
  ' _ "$rate" "$BUILD/bench/service/transfer_bench" "$BUILD/cachesvc/cachesvc"
done
"${PYTHON:-/usr/bin/python3}" bench/service/plot_transfer.py docs/img/bench_transfer.png \
  bench/results/transfer_*.json
