#!/usr/bin/env bash
# KVStash benchmarks. `./run.sh bench [NAME...]` builds build/release and runs this from the repo
# root; with no NAME every benchmark runs. Each writes bench/results/<name>.json and prints its
# tables; docs/benchmarks-<name>.md holds the reference figures and the exact command.
#
#   service   data paths of cachesvc (shared memory, gRPC streams) vs memcpy and Redis
#   ssd       SSD tier vs fio (storage)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${KVSTASH_BUILD:-build/release}"
mkdir -p bench/results

log() { printf '\033[1m[bench]\033[0m %s\n' "$*"; }

bench_service() {
  log "service data paths -> bench/results/service_paths.json"
  "$BUILD/bench/service/service_paths_bench" --out bench/results/service_paths.json
}

bench_ssd() {
  log "SSD tier vs fio -> bench/results/ssd_tier.json"
  "$BUILD/bench/storage/ssd_tier_bench" --out bench/results/ssd_tier.json
}

ALL=(service ssd)
selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${ALL[@]}")
for name in "${selected[@]}"; do
  case "$name" in
    service) bench_service ;;
    ssd) bench_ssd ;;
    *)
      echo "unknown benchmark: $name (known: ${ALL[*]})" >&2
      exit 2
      ;;
  esac
done
log "done"
