#!/usr/bin/env bash
# Shared-prefix workload from three engine processes (SmolLM2-135M through the KV connector) on
# three cachesvc nodes on loopback: one cluster (etcd, default R, UCX peer fetch) against three
# isolated nodes, and the engines without a cache as the compute baseline
# (bench/cluster/shared_prefix_bench.cc; docs/benchmarks-cluster.md "Shared-prefix workload").
# Every process it starts (etcd, cachesvc, engines) is stopped when it ends; the whole run is
# bounded by --timeout-s. Results: bench/results/cluster_shared_prefix.json (medians of --reps).
#
#   scripts/bench_shared_prefix.sh [--reps 3] [--baseline-reps 1] [--requests 12] [--docs 4]
#                                  [--doc-tokens 512] [--max-tokens 8] [--timeout-s 1800]
#                                  [--out FILE]
# On the shared 2-core VM at load 14 one repetition of 12 requests took about 3 minutes for the
# cluster and isolated runs together, and the no-cache baseline about 2.5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
REPS=3 BASELINE_REPS=1 REQUESTS=12 DOCS=4 DOC_TOKENS=512 MAX_TOKENS=8 TIMEOUT_S=1800
OUT=bench/results/cluster_shared_prefix.json
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --baseline-reps) BASELINE_REPS="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --docs) DOCS="$2"; shift 2 ;;
    --doc-tokens) DOC_TOKENS="$2"; shift 2 ;;
    --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
    --timeout-s) TIMEOUT_S="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BENCH="$BUILD/bench/cluster/shared_prefix_bench"
ENGINE="$BUILD/tests/cluster/shared_prefix_engine"
MODEL="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="${KVSTASH_SHARED_DATA:-../shared/data}/text"
for f in "$BENCH" "$ENGINE" "$BUILD/cachesvc/cachesvc" "$MODEL" "$TEXT/botchan.txt" /usr/bin/etcd; do
  [ -e "$f" ] || {
    echo "missing $f (cmake --build --preset release --target shared_prefix_bench cachesvc;" \
      "scripts/fetch_models.sh; etcd-server)" >&2
    exit 1
  }
done
mkdir -p "$(dirname "$OUT")"
echo "[bench_shared_prefix] uptime before: $(uptime)"
# The driver kills its children (etcd, cachesvc, engines) when it ends, and they die with it
# if it is killed (PR_SET_PDEATHSIG); timeout bounds the run.
timeout --kill-after=30 "$TIMEOUT_S" "$BENCH" --model "$MODEL" --text-dir "$TEXT" \
  --reps "$REPS" --baseline-reps "$BASELINE_REPS" --requests "$REQUESTS" --docs "$DOCS" \
  --doc-tokens "$DOC_TOKENS" \
  --max-tokens "$MAX_TOKENS" --out "$OUT" >/dev/null
echo "[bench_shared_prefix] uptime after: $(uptime)"
python3 - "$OUT" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["median"]
print(f"medians of {r['reps']} reps (no cache: {r['baseline_reps']}), {r['requests']} requests over {r['docs']} documents of "
      f"{r['doc_tokens']} tokens; tokens identical across configs: {r['tokens_identical']}")
print(f"{'config':9} {'hit rate':>8} {'remote':>7} {'load p50':>9} {'load p90':>9} "
      f"{'TTFT p50':>9} {'TTFT total':>10} {'computed':>8}")
for c in ("cluster", "isolated", "nocache"):
    if c in m:
        x = m[c]
        print(f"{c:9} {x['hit_rate']:8.3f} {x['remote_hit_rate']:7.3f} {x['load_p50_ms']:7.2f}ms "
              f"{x['load_p90_ms']:7.2f}ms {x['ttft_p50_ms']:7.1f}ms {x['ttft_total_ms']:8.0f}ms "
              f"{x['computed_tokens']:8.0f}")
print("load p50 of requests with a remote hit / all-local hits (ms):",
      {c: (round(m[c].get("remote_load_p50_ms", 0), 2), round(m[c].get("local_load_p50_ms", 0), 2))
       for c in ("cluster", "isolated") if c in m})
print("cluster / isolated:", json.dumps(r["cluster_over_isolated"]))
if "saved_vs_nocache" in r:
    print("saved against no cache:", json.dumps(r["saved_vs_nocache"]))
PYEOF
