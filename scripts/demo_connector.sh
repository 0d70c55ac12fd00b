#!/usr/bin/env bash
# Connector demo (docs/connector.md): SmolLM2 answers questions about long documents from
# ../shared/data/text, several turns per document (each turn's prompt extends the previous one),
# through one cachesvc:
#   no cache      the reference tokens (skip with KVSTASH_DEMO_NO_REFERENCE=1)
#   cold          fresh cachesvc: chunks are stored as they are computed (later turns already hit)
#   warm          same workload again: prefixes come from the CPU tier
#   warm (SSD)    cachesvc restarted (new, empty arena): prefixes come from the SSD tier
# Prints TTFT and hit rates per tier per pass, and checks every pass generated exactly the
# reference tokens. Called by scripts/demo.sh; runs standalone from the repository root too.
# Environment: KVSTASH_BUILD (default build/release), KVSTASH_CACHE (models), and
# KVSTASH_DEMO_DOC_TOKENS / _TURNS / _MAX_TOKENS / _DOCS / _THREADS to size the workload.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD="${KVSTASH_BUILD:-$ROOT/build/release}"
CACHESVC="$BUILD/cachesvc/cachesvc"
KVSTASH="$BUILD/cli/kvstash"
MODEL="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_DIR="${KVSTASH_SHARED_DATA:-$ROOT/../shared/data}/text"
WORKLOAD=(--model "$MODEL" --text-dir "$TEXT_DIR"
  --docs "${KVSTASH_DEMO_DOCS:-botchan.txt,wizard_of_oz.txt}"
  --doc-tokens "${KVSTASH_DEMO_DOC_TOKENS:-1000}" --turns "${KVSTASH_DEMO_TURNS:-3}"
  --max-tokens "${KVSTASH_DEMO_MAX_TOKENS:-16}" --threads "${KVSTASH_DEMO_THREADS:-0}")

WORK=$(mktemp -d /tmp/kvstash-connector-demo.XXXXXX)
TARGET="unix://$WORK/svc.sock"
SVC_PID=""

say() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

cleanup() {
  local rc=$?
  if [ -n "$SVC_PID" ] && kill -0 "$SVC_PID" 2>/dev/null; then
    kill -TERM "$SVC_PID" 2>/dev/null || true
    wait "$SVC_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  [ $rc -eq 0 ] || echo "connector demo FAILED (exit $rc)" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_cachesvc() {
  rm -f "$WORK/ready.json"
  "$CACHESVC" --listen "$TARGET" --data-dir "$WORK/data" --cpu-capacity 1GiB --ssd-capacity 4GiB \
    --metrics-port 0 --ready-file "$WORK/ready.json" >>"$WORK/cachesvc.log" 2>&1 &
  SVC_PID=$!
  for _ in $(seq 1 600); do
    [ -s "$WORK/ready.json" ] && return 0
    kill -0 "$SVC_PID" 2>/dev/null || { cat "$WORK/cachesvc.log" >&2; return 1; }
    sleep 0.05
  done
  echo "cachesvc did not become ready" >&2
  return 1
}

stop_cachesvc() {
  kill -TERM "$SVC_PID"
  wait "$SVC_PID"
  SVC_PID=""
}

main() {
  for f in "$CACHESVC" "$KVSTASH"; do
    [ -x "$f" ] || { echo "build first: missing $f" >&2; exit 1; }
  done
  [ -f "$MODEL" ] || { echo "missing $MODEL: run ./scripts/fetch_models.sh" >&2; exit 1; }
  local ref=() passes=()
  if [ "${KVSTASH_DEMO_NO_REFERENCE:-0}" != 1 ]; then
    say "connector 1/4: reference pass without any cache"
    "$KVSTASH" workload "${WORKLOAD[@]}" --pass "no cache" --out "$WORK/nocache.json"
    ref=(--reference "$WORK/nocache.json")
    passes+=("$WORK/nocache.json")
  fi
  say "connector 2/4: cold pass through a fresh cachesvc ($TARGET)"
  start_cachesvc
  "$KVSTASH" workload "${WORKLOAD[@]}" --cache-target "$TARGET" --pass cold \
    --out "$WORK/cold.json" "${ref[@]}"
  [ ${#ref[@]} -gt 0 ] || ref=(--reference "$WORK/cold.json")
  passes+=("$WORK/cold.json")

  say "connector 3/4: warm pass (CPU tier)"
  "$KVSTASH" workload "${WORKLOAD[@]}" --cache-target "$TARGET" --pass warm \
    --out "$WORK/warm.json" "${ref[@]}"
  passes+=("$WORK/warm.json")

  say "connector 4/4: cachesvc restarted (empty arena): warm pass from the SSD tier"
  stop_cachesvc
  start_cachesvc
  "$KVSTASH" workload "${WORKLOAD[@]}" --cache-target "$TARGET" --pass "warm (SSD)" \
    --out "$WORK/ssd.json" "${ref[@]}"
  passes+=("$WORK/ssd.json")
  "$KVSTASH" stat --target "$TARGET" | sed 's/^/   /'
  stop_cachesvc

  say "connector summary: TTFT and hit rates per pass (speedup: total TTFT vs the first row)"
  "$KVSTASH" workload --summary "${passes[@]}"
  # Every pass above exits non-zero if its tokens differ from the reference.
  echo "tokens identical: yes (every pass generated the reference tokens, turn by turn)"
}

main "$@"
