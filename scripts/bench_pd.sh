#!/usr/bin/env bash
# Prefill/decode handoff against recomputing on the decode node (docs/benchmarks-transfer.md,
# "P/D handoff"). For prompts of about 512, 1024 and 2048 tokens of SmolLM2-135M, with two
# cachesvc nodes on loopback (node B names node A as its --peer; UCX between them):
#   recompute: the decode process computes the whole prompt itself (no cache);
#   handoff:   a prefill-only process on A stores the prompt's KV and offers it; the decode
#              process on B fetches the handoff into B and prefills through the connector.
# Decode-side TTFT is the decode process's time to first token, the handoff fetch included.
# Each size runs --reps times (fresh namespace each rep); medians go to bench/results/pd_handoff.json.
#
#   scripts/bench_pd.sh [--reps N] [--tokens "512 1024 2048"]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build/release}"
REPS=3
SIZES="512 1024 2048"
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --tokens) SIZES="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
CACHESVC="$BUILD/cachesvc/cachesvc"
KVSTASH="$BUILD/cli/kvstash"
MODEL="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="${KVSTASH_SHARED_DATA:-../shared/data}/text/botchan.txt"
for f in "$CACHESVC" "$KVSTASH" "$MODEL" "$TEXT"; do
  [ -e "$f" ] || { echo "missing $f (./run.sh build; scripts/fetch_models.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/kvstash-pd.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
head -c 32 /dev/urandom | base64 >"$WORK/secret"
start_node() {  # name listen extra...
  local name="$1" listen="$2"
  shift 2
  mkdir -p "$WORK/$name"
  "$CACHESVC" --listen "$listen" --data-dir "$WORK/$name/data" --metrics-port 0 \
    --cpu-capacity 512MiB --prefault-arena false --ssd-capacity 0 \
    --peer-secret-file "$WORK/secret" --ready-file "$WORK/$name/ready.json" "$@" \
    >>"$WORK/$name/log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do [ -s "$WORK/$name/ready.json" ] && return 0; sleep 0.05; done
  cat "$WORK/$name/log" >&2
  return 1
}
A="127.0.0.1:$(free_port)"
B="127.0.0.1:$(free_port)"
start_node a "$A"
start_node b "$B" --peer "$A" --remote-lookup false
ttft() { grep -o 'TTFT [0-9.]* ms' "$1" | awk '{print $2}'; }
tokens() { grep -o 'prompt [0-9]* tokens' "$1" | awk '{print $2}'; }
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for n in $SIZES; do
  # About 4.2 characters per SmolLM2 token in this text; the exact count is reported.
  chars=$(( n * 42 / 10 ))
  prompt="$(head -c "$chars" "$TEXT")"
  for rep in $(seq 1 "$REPS"); do
    ns="pd-$n-$rep-$$"
    gen=("$KVSTASH" generate --model "$MODEL" --prompt "$prompt" --cache-namespace "$ns")
    "${gen[@]}" --max-tokens 8 >"$WORK/single.txt" 2>"$WORK/single.err"
    "${gen[@]}" --max-tokens 1 --cache-target "$A" --handoff-out "$WORK/h.bin" >/dev/null 2>"$WORK/pre.err"
    "${gen[@]}" --max-tokens 8 --cache-target "$B" --handoff-in "$WORK/h.bin" >"$WORK/dec.txt" 2>"$WORK/dec.err"
    same=0
    cmp -s "$WORK/single.txt" "$WORK/dec.txt" && same=1
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$(tokens "$WORK/single.err")" "$(ttft "$WORK/single.err")" \
      "$(ttft "$WORK/dec.err")" "$same" >>"$RESULTS"
    printf 'target %5s tokens, rep %s: prompt %s tokens, recompute %s ms, handoff %s ms, tokens identical: %s\n' \
      "$n" "$rep" "$(tokens "$WORK/single.err")" "$(ttft "$WORK/single.err")" "$(ttft "$WORK/dec.err")" "$same"
  done
done
mkdir -p bench/results
python3 - "$RESULTS" "$REPS" <<'PY'
import json, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
out = {"bench": "pd_handoff", "reps": int(sys.argv[2]), "model": "SmolLM2-135M-Instruct Q4_1",
       "command": "scripts/bench_pd.sh --reps " + sys.argv[2], "points": []}
for n in sorted({int(r[0]) for r in rows}):
    rs = [r for r in rows if int(r[0]) == n]
    rec = statistics.median(float(r[2]) for r in rs)
    hand = statistics.median(float(r[3]) for r in rs)
    out["points"].append({"target_tokens": n, "prompt_tokens": int(rs[0][1]),
                          "recompute_ttft_ms": rec, "handoff_ttft_ms": hand,
                          "speedup": rec / hand,
                          "tokens_identical": all(r[4] == "1" for r in rs),
                          "recompute_ms_reps": [float(r[2]) for r in rs],
                          "handoff_ms_reps": [float(r[3]) for r in rs]})
    p = out["points"][-1]
    print(f"{p['prompt_tokens']:5d} tokens: recompute {rec:8.1f} ms, handoff {hand:7.1f} ms, "
          f"{p['speedup']:.1f}x, tokens identical: {p['tokens_identical']}")
json.dump(out, open("bench/results/pd_handoff.json", "w"), indent=2)
print("wrote bench/results/pd_handoff.json")
PY
