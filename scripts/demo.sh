#!/usr/bin/env bash
# KVStash demo. `./run.sh demo` builds build/release and runs this script from the repo root.
#
# Sections (each a function; later issues add their own and list them in main):
#   service_start        cachesvc on the embedded default config (CPU + SSD tiers in ./data),
#                        on a private socket so it never collides with another daemon
#   store_kv_chunks      SmolLM2-sized KV chunks (256 tokens x 30 layers x K,V x 3 heads x 64 x
#                        f16 = 5.9 MB each, deterministic content) stored durably over shared memory
#   read_back            read through shared memory and through the gRPC stream path, compare
#   crash_and_recover    kill -9 the daemon, restart it on the same ./data, read everything again
#   connector_demo       SmolLM2 multi-turn long-document chat through cachesvc: cold, warm (CPU),
#                        warm (SSD) passes, tokens checked against a no-cache run
#                        (scripts/demo_connector.sh)
#   blend_demo           RAG prompts on SmolLM2: chunks reused at any position (CacheBlend,
#                        Cache-Craft) vs full prefill, prefix caching, naive reuse; TTFT + quality
#                        (scripts/demo_blend.sh)
#   codec_tier_demo      a second cachesvc whose SSD tier stores CacheGen level 2
#                        (--ssd-encoding cachegen): KV chunks put, daemon restarted, read back
#                        from SSD (decoded on promotion); SSD bytes vs raw bytes, max error
#   two_nodes_demo       two cachesvc nodes with a cluster secret, node B naming node A as its
#                        --peer: an object put on A read from B (UCX one-sided reads), then a
#                        prefill/decode handoff: a prefill-only SmolLM2 process on A offers the
#                        prompt's KV, a decode-only process on B fetches it and generates; tokens
#                        compared with a single-node run, TTFT against recomputing on B
#   cluster_demo         three nodes and an etcd (--etcd, --replicas 2, TTL 2 s): chunks put across
#                        the nodes, kvstash cluster status, kill -9 of one node, every chunk read
#                        back byte for byte from both survivors, re-replication to R = 2
#   summary
# Every process the demo starts is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD="${KVSTASH_BUILD:-$ROOT/build/release}"
CACHESVC="$BUILD/cachesvc/cachesvc"
KVSTASH="$BUILD/cli/kvstash"
CHUNKS="${KVSTASH_DEMO_CHUNKS:-8}"
DATA_DIR="$ROOT/data"

WORK=$(mktemp -d /tmp/kvstash-demo.XXXXXX)
SOCK="$WORK/kvstash.sock"
TARGET="unix://$SOCK"
SVC_PID=""
SVC_LOG="$WORK/cachesvc.log"
CODEC_PID=""
NODE_A_PID=""
NODE_B_PID=""
ETCD_PID=""
CLUSTER_PIDS=()
declare -A SHA
SUMMARY=()

say() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
now_ms() { date +%s%3N; }

cleanup() {
  local rc=$?
  local pid
  for pid in "$SVC_PID" "$CODEC_PID" "$NODE_A_PID" "$NODE_B_PID" "${CLUSTER_PIDS[@]}" "$ETCD_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
  if [ $rc -ne 0 ]; then
    echo "demo FAILED (exit $rc)" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts cachesvc in the background and waits for its ready file.
start_cachesvc() {
  local ready="$WORK/ready.json"
  rm -f "$ready"
  METRICS_PORT=$(free_port)
  # Embedded default for everything else: data in ./data, 1 GiB CPU arena, 8 GiB SSD tier.
  "$CACHESVC" --listen "$TARGET" --data-dir "$DATA_DIR" --metrics-address 127.0.0.1 \
    --metrics-port "$METRICS_PORT" --ready-file "$ready" >>"$SVC_LOG" 2>&1 &
  SVC_PID=$!
  for _ in $(seq 1 300); do
    [ -s "$ready" ] && return 0
    if ! kill -0 "$SVC_PID" 2>/dev/null; then
      echo "cachesvc exited during start-up:" >&2
      cat "$SVC_LOG" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "cachesvc did not become ready" >&2
  return 1
}

chunk_key() { echo "demo/smollm2-135m/chunk-$1"; }

service_start() {
  say "1. start cachesvc (embedded default: CPU + SSD tiers in ./data)"
  local t0
  t0=$(now_ms)
  start_cachesvc
  note "pid $SVC_PID, gRPC $TARGET, metrics http://127.0.0.1:$METRICS_PORT/metrics"
  note "ready in $(($(now_ms) - t0)) ms; /healthz says: $(curl -fsS "http://127.0.0.1:$METRICS_PORT/healthz" 2>/dev/null || echo '?')"
  "$KVSTASH" stat --target "$TARGET" | sed 's/^/   /'
}

store_kv_chunks() {
  say "2. store $CHUNKS SmolLM2-sized KV chunks (durable, over shared memory)"
  local t0 i f
  for i in $(seq 0 $((CHUNKS - 1))); do
    f="$WORK/chunk-$i.kvo"
    "$KVSTASH" synth "$f" --layers 30 --tokens 256 --kv-heads 3 --head-dim 64 --seed "$i" >/dev/null
    SHA[$i]=$(sha256sum "$f" | cut -c1-64)
  done
  note "each: $("$KVSTASH" synth - --seed 0 | wc -c) bytes as an object file (64-byte header + payload)"
  t0=$(now_ms)
  for i in $(seq 0 $((CHUNKS - 1))); do
    "$KVSTASH" put "$(chunk_key "$i")" "$WORK/chunk-$i.kvo" --durable --overwrite --target "$TARGET" |
      sed 's/^/   /'
  done
  local ms=$(($(now_ms) - t0))
  note "stored $CHUNKS chunks in $ms ms (one kvstash process per chunk, fsync'd to SSD)"
  SUMMARY+=("stored $CHUNKS x 5.9 MB KV chunks durably in $ms ms")
}

verify_all() {  # $1: label, $2...: extra kvstash args
  local label=$1
  shift
  local ok=0 i out
  for i in $(seq 0 $((CHUNKS - 1))); do
    out="$WORK/back-$i.kvo"
    rm -f "$out"
    "$KVSTASH" get "$(chunk_key "$i")" "$out" --target "$TARGET" "$@" >/dev/null
    if [ "$(sha256sum "$out" | cut -c1-64)" = "${SHA[$i]}" ]; then
      ok=$((ok + 1))
    else
      echo "   chunk $i differs after $label!" >&2
    fi
  done
  note "$label: $ok/$CHUNKS chunks byte-identical (sha256)"
  SUMMARY+=("$label: $ok/$CHUNKS intact")
  [ "$ok" -eq "$CHUNKS" ]
}

read_back() {
  say "3. read back through shared memory and through gRPC streams"
  verify_all "read via shared memory"
  verify_all "read via gRPC stream" --no-shm
  "$KVSTASH" stat "$(chunk_key 0)" "$(chunk_key 1)" --target "$TARGET" | sed 's/^/   /'
}

crash_and_recover() {
  say "4. kill -9 cachesvc, restart on the same ./data"
  kill -KILL "$SVC_PID"
  wait "$SVC_PID" 2>/dev/null || true
  note "killed pid $SVC_PID with SIGKILL (no shutdown, no flush)"
  SVC_PID=""
  local t0
  t0=$(now_ms)
  start_cachesvc
  note "restarted as pid $SVC_PID in $(($(now_ms) - t0)) ms (stale socket replaced, SSD index recovered)"
  "$KVSTASH" stat "$(chunk_key 0)" --target "$TARGET" | sed 's/^/   /'
  verify_all "after kill -9 + restart"
  note "checksum failures so far: $(curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '/^kvstash_storage_checksum_failures_total/ {print $2}')"
  "$KVSTASH" ls --target "$TARGET" | tail -n 1 | sed 's/^/   /'
}

summary() {
  say "summary"
  local line
  for line in "${SUMMARY[@]}"; do note "$line"; done
  kill -TERM "$SVC_PID"
  wait "$SVC_PID"
  note "cachesvc stopped with SIGTERM (exit 0); objects stay in ./data for the next run"
  SVC_PID=""
}

connector_demo() {
  say "5. SmolLM2 through the connector: prefix reuse from the CPU and SSD tiers"
  ./scripts/demo_connector.sh
  SUMMARY+=("connector: cold/warm/SSD passes generated identical tokens (table above)")
}

blend_demo() {
  say "6. RAG chunks reused at any position: CacheBlend and Cache-Craft"
  ./scripts/demo_blend.sh
  SUMMARY+=("blend: TTFT and quality per method printed above (docs/blend.md has the full evaluation)")
}

# Starts the codec-tier daemon (its own socket, data and log under $WORK/codec-tier).
start_codec_cachesvc() {
  local dir="$WORK/codec-tier" ready="$WORK/codec-tier/ready.json"
  mkdir -p "$dir"
  rm -f "$ready"
  "$CACHESVC" --listen "unix://$dir/kvstash.sock" --data-dir "$dir/data" --metrics-port 0 \
    --cpu-capacity 256MiB --prefault-arena false --ssd-capacity 1GiB \
    --ssd-encoding cachegen --ssd-encoding-level 2 --ready-file "$ready" >>"$dir/cachesvc.log" 2>&1 &
  CODEC_PID=$!
  for _ in $(seq 1 300); do
    [ -s "$ready" ] && return 0
    if ! kill -0 "$CODEC_PID" 2>/dev/null; then
      cat "$dir/cachesvc.log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "codec-tier cachesvc did not become ready" >&2
  return 1
}

codec_tier_demo() {
  say "7. compressed SSD tier: cachesvc --ssd-encoding cachegen --ssd-encoding-level 2"
  local dir="$WORK/codec-tier" target="unix://$WORK/codec-tier/kvstash.sock" n=4 i
  start_codec_cachesvc
  note "second daemon pid $CODEC_PID on $target; CPU tier raw, SSD tier CacheGen level 2"
  for i in $(seq 0 $((n - 1))); do
    # Same SmolLM2-135M shape as section 2 (the CLI cannot dump a model's KV; synth has the
    # statistics CacheGen exploits: per-channel scales, K outliers, token locality).
    "$KVSTASH" synth "$dir/kv-$i.kvo" --layers 30 --tokens 256 --kv-heads 3 --head-dim 64 \
      --seed $((100 + i)) >/dev/null
    "$KVSTASH" put "codec/chunk-$i" "$dir/kv-$i.kvo" --durable --target "$target" >/dev/null
  done
  note "put $n x 5.9 MB raw f16 chunks durably (encoded by the SSD writer pool, not on the put path)"
  kill -TERM "$CODEC_PID"
  wait "$CODEC_PID"
  CODEC_PID=""
  start_codec_cachesvc
  note "restarted: the CPU tier is empty, every chunk is only on the compressed SSD tier"
  "$KVSTASH" stat --target "$target" | sed 's/^/   /'
  for i in $(seq 0 $((n - 1))); do
    "$KVSTASH" get "codec/chunk-$i" "$dir/back-$i.kvo" --target "$target" >/dev/null
  done
  "$KVSTASH" stat "codec/chunk-0" --target "$target" | sed 's/^/   /'
  local ratio err
  ratio=$("$KVSTASH" stat --target "$target" | awk '/tier encoding/ {sub(":", "", $8); print $1 " " $2 " of KV in " $7 " " $8 " on SSD, " $9}')
  err=$(python3 - "$dir" "$n" <<'PY'
import struct, sys
d, n = sys.argv[1], int(sys.argv[2])
worst = peak = 0.0
for i in range(n):
    a = open(f"{d}/kv-{i}.kvo", "rb").read()[64:]
    b = open(f"{d}/back-{i}.kvo", "rb").read()[64:]
    assert len(a) == len(b), "size differs"
    x = struct.unpack(f"<{len(a) // 2}e", a)
    y = struct.unpack(f"<{len(b) // 2}e", b)
    worst = max(worst, max(abs(p - q) for p, q in zip(x, y)))
    peak = max(peak, max(abs(p) for p in x))
print(f"{worst:.4g} (max |x| {peak:.4g})")
PY
)
  note "read back from SSD, decoded into the CPU tier; crc32c verified; max |error| vs original: $err"
  SUMMARY+=("compressed SSD tier (CacheGen L2): $ratio; max |error| after restart $err")
  # A client on another node streams over gRPC; accepting CacheGen, it gets the container and
  # decodes it (docs/api.md "Encoded transfers"). kvstash get reports the wire bytes on stderr.
  local wire
  wire=$("$KVSTASH" get "codec/chunk-1" "$dir/wire-1.kvo" --cachegen 2 --target "$target" 2>&1 >/dev/null)
  note "streamed as a remote client that accepts CacheGen (kvstash get --cachegen 2): $wire"
  SUMMARY+=("encoded transfer of one chunk: $wire")
  kill -TERM "$CODEC_PID"
  wait "$CODEC_PID"
  CODEC_PID=""
}

# Starts one node of the two-node section: $1 name, $2 listen address, then extra flags. Sets
# the variable NODE_<name>_PID.
start_node() {
  local name="$1" listen="$2"
  shift 2
  local dir="$WORK/node-$name"
  mkdir -p "$dir"
  "$CACHESVC" --listen "$listen" --data-dir "$dir/data" --metrics-port 0 --cpu-capacity 256MiB \
    --prefault-arena false --ssd-capacity 512MiB --peer-secret-file "$WORK/cluster-secret" \
    --ready-file "$dir/ready.json" "$@" >>"$dir/cachesvc.log" 2>&1 &
  printf -v "NODE_${name}_PID" '%s' "$!"
  for _ in $(seq 1 300); do
    [ -s "$dir/ready.json" ] && return 0
    sleep 0.05
  done
  echo "node $name did not become ready:" >&2
  cat "$dir/cachesvc.log" >&2
  return 1
}

two_nodes_demo() {
  say "8. two nodes: a remote-tier read and a prefill/decode handoff (UCX between the nodes)"
  local model="${KVSTASH_CACHE:-$HOME/.cache/kvstash}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  local a_port b_port a b
  a_port=$(free_port)
  b_port=$(free_port)
  a="127.0.0.1:$a_port"
  b="127.0.0.1:$b_port"
  head -c 32 /dev/urandom | base64 >"$WORK/cluster-secret"
  start_node A "$a"
  start_node B "$b" --peer "$a" --remote-lookup false
  note "node A (prefill) $a, node B (decode) $b --peer $a; both with --peer-secret-file"
  "$KVSTASH" synth "$WORK/remote.kvo" --layers 30 --tokens 256 --kv-heads 3 --head-dim 64 \
    --seed 7 >/dev/null
  "$KVSTASH" put "demo/remote-chunk" "$WORK/remote.kvo" --target "$a" >/dev/null
  "$KVSTASH" get "demo/remote-chunk" "$WORK/remote-back.kvo" --target "$b" >/dev/null
  if cmp -s "$WORK/remote.kvo" "$WORK/remote-back.kvo"; then
    note "kvstash put on A, kvstash get --target B: 5.9 MB chunk identical, fetched from A"
  else
    echo "the chunk read from node B differs from the one put on node A" >&2
    return 1
  fi
  "$KVSTASH" stat --target "$b" | grep -E '^tier|^remote' | sed 's/^/   /'

  local prompt
  prompt="$(head -c 4000 "${KVSTASH_SHARED_DATA:-../shared/data}/text/botchan.txt") Who is speaking?"
  local gen=("$KVSTASH" generate --model "$model" --prompt "$prompt" --max-tokens 24)
  "${gen[@]}" >"$WORK/pd-single.txt" 2>"$WORK/pd-single.err"
  local ttft_single
  ttft_single=$(grep -o 'TTFT [0-9.]* ms' "$WORK/pd-single.err" | awk '{print $2}')
  note "single node, no cache: TTFT $ttft_single ms (what node B would pay recomputing)"
  "$KVSTASH" generate --model "$model" --prompt "$prompt" --max-tokens 1 --cache-target "$a" \
    --handoff-out "$WORK/handoff.bin" >/dev/null 2>"$WORK/pd-prefill.err"
  grep 'handoff:' "$WORK/pd-prefill.err" | sed 's/^\[kvstash generate\] /   prefill on A: /'
  "${gen[@]}" --cache-target "$b" --handoff-in "$WORK/handoff.bin" >"$WORK/pd-decode.txt" \
    2>"$WORK/pd-decode.err"
  grep -E 'handoff:|cache: hit' "$WORK/pd-decode.err" | sed 's/^\[kvstash generate\] /   decode on B: /'
  local ttft_decode
  ttft_decode=$(grep -o 'TTFT [0-9.]* ms' "$WORK/pd-decode.err" | awk '{print $2}')
  if cmp -s "$WORK/pd-single.txt" "$WORK/pd-decode.txt"; then
    note "decode on B after the handoff: TTFT $ttft_decode ms (fetch included), tokens identical to the single-node run"
  else
    echo "tokens after the handoff differ from the single-node run" >&2
    diff "$WORK/pd-single.txt" "$WORK/pd-decode.txt" >&2 || true
    return 1
  fi
  SUMMARY+=("two nodes: remote read byte-identical; P/D handoff TTFT $ttft_decode ms vs $ttft_single ms recomputing, tokens identical")
  kill -TERM "$NODE_A_PID" "$NODE_B_PID"
  wait "$NODE_A_PID" "$NODE_B_PID" || true
  NODE_A_PID=""
  NODE_B_PID=""
}

cluster_demo() {
  say "9. a three-node cluster through etcd loses a node (R = 2, membership TTL 2 s)"
  command -v etcd >/dev/null || { note "etcd not installed (Debian etcd-server): skipped"; return 0; }
  local ec ep dir i n
  ec=$(free_port)
  ep=$(free_port)
  mkdir -p "$WORK/etcd"
  etcd --name demo --data-dir "$WORK/etcd/data" --listen-client-urls "http://127.0.0.1:$ec" \
    --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ep" \
    --initial-cluster "demo=http://127.0.0.1:$ep" --log-level warn >"$WORK/etcd/etcd.log" 2>&1 &
  ETCD_PID=$!
  [ -s "$WORK/cluster-secret" ] || head -c 32 /dev/urandom | base64 >"$WORK/cluster-secret"
  local addr=()
  for i in 0 1 2; do
    addr+=("127.0.0.1:$(free_port)")
    start_node "C$i" "${addr[$i]}" --etcd "http://127.0.0.1:$ec" --replicas 2 \
      --cluster-ttl-s 2 --node-id "node-$i" --peer-retry-ms 300
    CLUSTER_PIDS+=("$(eval echo "\$NODE_C${i}_PID")")
  done
  nodes_seen() { "$KVSTASH" cluster status --json --target "$1" 2>/dev/null | grep -o '"id":' | wc -l; }
  for _ in $(seq 1 100); do [ "$(nodes_seen "${addr[0]}")" = 3 ] && break; sleep 0.1; done
  note "etcd on 127.0.0.1:$ec; nodes ${addr[*]} registered"
  n=12
  for i in $(seq 1 $n); do
    "$KVSTASH" synth "$WORK/cl-$i.kvo" --layers 4 --tokens 64 --kv-heads 3 --head-dim 64 \
      --seed "$i" >/dev/null
    "$KVSTASH" put "demo/cluster-$i" "$WORK/cl-$i.kvo" --target "${addr[$((i % 3))]}" >/dev/null
  done
  note "$n chunks put, round robin over the three nodes (each forwarded to its other owner)"
  sleep 1
  "$KVSTASH" cluster status --target "${addr[0]}" | sed 's/^/   /'
  local t0 t1
  t0=$(now_ms)
  kill -KILL "${CLUSTER_PIDS[2]}"
  wait "${CLUSTER_PIDS[2]}" 2>/dev/null || true
  for _ in $(seq 1 100); do [ "$(nodes_seen "${addr[0]}")" = 2 ] && break; sleep 0.05; done
  t1=$(now_ms)
  note "kill -9 node-2: the survivors dropped it from their view after $((t1 - t0)) ms"
  local ok=0
  for i in $(seq 1 $n); do
    for node in 0 1; do
      "$KVSTASH" get "demo/cluster-$i" "$WORK/cl-back.kvo" --target "${addr[$node]}" >/dev/null &&
        cmp -s "$WORK/cl-$i.kvo" "$WORK/cl-back.kvo" && ok=$((ok + 1))
    done
  done
  note "read back from node-0 and node-1: $ok of $((2 * n)) reads byte-identical"
  local under=""
  for _ in $(seq 1 100); do
    under=$("$KVSTASH" cluster status --json --target "${addr[0]}" | grep -o '"under_replicated":[0-9]*' | head -1 | cut -d: -f2)
    [ "$under" = 0 ] && break
    sleep 0.1
  done
  "$KVSTASH" cluster status --target "${addr[0]}" | sed 's/^/   /'
  if [ "$ok" != $((2 * n)) ]; then
    echo "objects were lost or differ after the node loss" >&2
    return 1
  fi
  SUMMARY+=("cluster: kill -9 of one of three nodes (R = 2): dropped after $((t1 - t0)) ms, $n/$n chunks identical on both survivors, under-replicated afterwards: $under")
  kill -TERM "${CLUSTER_PIDS[0]}" "${CLUSTER_PIDS[1]}" "$ETCD_PID"
  wait "${CLUSTER_PIDS[0]}" "${CLUSTER_PIDS[1]}" "$ETCD_PID" 2>/dev/null || true
  CLUSTER_PIDS=()
  ETCD_PID=""
}

main() {
  [ -x "$CACHESVC" ] && [ -x "$KVSTASH" ] || {
    echo "build first: cmake --preset release && cmake --build --preset release" >&2
    exit 1
  }
  service_start
  store_kv_chunks
  read_back
  crash_and_recover
  connector_demo
  blend_demo
  codec_tier_demo
  two_nodes_demo
  cluster_demo
  summary
}

main "$@"
