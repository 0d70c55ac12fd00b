#!/usr/bin/env bash
# Baselines for node-to-node transfers (docs/peer-baselines.md): what third-party transfer
# engines reach on this machine, for the same object sizes and batch sizes as KVStash's own
# UCX transfer path, so that a later benchmark can put them side by side.
#
#   * ucx_perftest (Debian ucx-utils, UCX 1.13; or another UCX's, --ucx-prefix): UCP RMA get
#     bandwidth (-t ucp_get), once with UCX_TLS=tcp (the network path) and once with UCX's
#     default transports (same host: shared memory). "batch" = -O, the number of operations
#     kept outstanding. Over tcp also the two-sided tag_bw and active-message ucp_am_bw, the
#     bounds of KVStash's Fetch and FetchInPlace (UCX 1.13's ucp_get over tcp is bound by a tool
#     artifact, see the doc).
#   * Mooncake Transfer Engine (PyPI mooncake-transfer-engine-non-cuda): transfer_engine_bench
#     initiator reading from a target over --protocol=tcp; metadata from mooncake_master's
#     HTTP metadata server. "batch" = --batch_size, transfers submitted per batch.
#
# Everything talks over loopback only. By default the measurements run inside a new network
# namespace (unshare -n) whose only interface is lo, so no tool can reach another address
# (transfer_engine_bench's built-in defaults point at 192.168.3.x). Each run is bounded by
# `timeout`; each point is run --reps times and the median is reported.
#
# Output: one JSON list of records, default bench/results/peer_baselines.json, each
#   {tool, transport, op, size_bytes, batch, gbytes_per_s, raw_line, command, ...extras}
# where gbytes_per_s is in GB/s (1e9 bytes/s) and raw_value/raw_unit keep the tool's figure.
#
# Install the tools first: scripts/install_peer_baselines.sh
#
#   scripts/bench_peer_baselines.sh [--reps N] [--sizes 65536,1048576,...] [--batches 1,16]
#                                   [--tools ucx,mooncake] [--ucx-tcp-ops ucp_get,tag_bw,ucp_am_bw]
#                                   [--ucx-transports tcp,default] [--ucx-prefix DIR]
#                                   [--ucx-env 'VAR=VALUE ...'] [--duration S] [--out FILE]
#                                   [--lo-mtu N] [--no-netns] [--keep-logs]
#   --ucx-prefix DIR   a UCX install (DIR/bin/ucx_perftest, DIR/lib), e.g. the libucx-cu13 wheel's
#                      $KVSTASH_CACHE/libucx-cu13-1.22.0/libucx (scripts/build_ucx_cuda.sh)
#   --ucx-env '...'    UCX settings for both perftest ends (e.g. the segment sizes UcxTransport
#                      sets: UCX_TCP_TX_SEG_SIZE=512k UCX_TCP_RX_SEG_SIZE=512k), kept in each record
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=3
SIZES="65536,1048576,4194304,33554432"
BATCHES="1,16"
TOOLS="ucx,mooncake"
DURATION=3            # seconds per transfer_engine_bench run
OUT="bench/results/peer_baselines.json"
LO_MTU=""             # empty: leave loopback's MTU as the kernel sets it (65536)
NETNS=1
KEEP_LOGS=0
UCX_TCP_BYTES=$((1 << 30))     # bytes moved per ucx_perftest run over tcp
UCX_SHM_BYTES=$((8 << 30))     # bytes moved per ucx_perftest run over shared memory
UCX_TIMEOUT=90                 # seconds, per ucx_perftest process
# Over tcp, also the two-sided tag_bw: UCX 1.13's ucx_perftest does not progress the
# responder in SW-emulated GET tests (rma_am over tcp), so ucp_get over tcp measures a ~1 ms
# per-round-trip artifact of the tool (docs/peer-baselines.md, pitfalls).
# ucp_am_bw: active messages, as KVStash's Fetch (eager) and FetchInPlace (rendezvous) move data.
UCX_TCP_OPS="ucp_get,tag_bw,ucp_am_bw"
UCX_TRANSPORTS="tcp,default"
UCX_PREFIX=""        # empty: ucx_perftest on PATH (Debian's, the UCX that KVStash links)
UCX_ENV=""
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
VENV="$CACHE/peers-venv"

usage() { sed -n '2,34p' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    --tools) TOOLS="$2"; shift 2 ;;
    --ucx-tcp-ops) UCX_TCP_OPS="$2"; shift 2 ;;
    --ucx-transports) UCX_TRANSPORTS="$2"; shift 2 ;;
    --ucx-prefix) UCX_PREFIX="$2"; shift 2 ;;
    --ucx-env) UCX_ENV="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --lo-mtu) LO_MTU="$2"; shift 2 ;;
    --no-netns) NETNS=0; shift ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$REPS" =~ ^[1-9][0-9]?$ ]] || { echo "--reps: 1..99" >&2; exit 2; }
[[ "$DURATION" =~ ^[1-9][0-9]?$ ]] || { echo "--duration: 1..99 seconds" >&2; exit 2; }
[[ "$SIZES" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "--sizes: comma-separated byte counts" >&2; exit 2; }
[[ "$UCX_TCP_OPS" =~ ^(ucp_get|tag_bw|ucp_put_bw|stream_bw|ucp_am_bw)(,(ucp_get|tag_bw|ucp_put_bw|stream_bw|ucp_am_bw))*$ ]] ||
  { echo "--ucx-tcp-ops: comma-separated ucx_perftest UCP bandwidth tests" >&2; exit 2; }
[[ "$UCX_TRANSPORTS" =~ ^(tcp|default)(,(tcp|default))*$ ]] ||
  { echo "--ucx-transports: tcp and/or default" >&2; exit 2; }
[[ -z "$UCX_ENV" || "$UCX_ENV" =~ ^UCX_[A-Z0-9_]+=[^[:space:]]+([[:space:]]+UCX_[A-Z0-9_]+=[^[:space:]]+)*$ ]] ||
  { echo "--ucx-env: space-separated UCX_*=VALUE settings" >&2; exit 2; }
[[ "$BATCHES" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "--batches: comma-separated counts" >&2; exit 2; }
[ -z "$LO_MTU" ] || [[ "$LO_MTU" =~ ^[0-9]+$ ]] || { echo "--lo-mtu: a number" >&2; exit 2; }
IFS=, read -r -a SIZE_LIST <<< "$SIZES"
IFS=, read -r -a BATCH_LIST <<< "$BATCHES"
want_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

# --- re-run inside a private network namespace (only lo) ---------------------------------
if [ "$NETNS" -eq 1 ] && [ -z "${KVSTASH_PEERS_IN_NETNS:-}" ]; then
  command -v unshare >/dev/null || { echo "unshare is needed (or pass --no-netns)" >&2; exit 1; }
  echo "[peers] running inside a new network namespace (unshare -n); pass --no-netns to skip"
  args=(--reps "$REPS" --sizes "$SIZES" --batches "$BATCHES" --tools "$TOOLS"
    --ucx-tcp-ops "$UCX_TCP_OPS" --ucx-transports "$UCX_TRANSPORTS" --ucx-env "$UCX_ENV"
    --duration "$DURATION" --out "$OUT")
  [ -z "$UCX_PREFIX" ] || args+=(--ucx-prefix "$UCX_PREFIX")
  [ -z "$LO_MTU" ] || args+=(--lo-mtu "$LO_MTU")
  [ "$KEEP_LOGS" -eq 0 ] || args+=(--keep-logs)
  KVSTASH_PEERS_IN_NETNS=1 exec unshare -n bash "$0" "${args[@]}"
fi
if [ -n "${KVSTASH_PEERS_IN_NETNS:-}" ]; then
  ip link set lo up
fi
[ -z "$LO_MTU" ] || ip link set lo mtu "$LO_MTU"
# (from ip, not /sys/class/net: sysfs still shows the parent namespace's lo after unshare -n)
lo_mtu_now=$(ip -o link show lo 2>/dev/null | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
lo_mtu_now=${lo_mtu_now:-unknown}

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d /tmp/kvstash-peers.XXXXXX)
SAMPLES="$WORK/samples.jsonl"
: > "$SAMPLES"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$KEEP_LOGS" -eq 1 ] || [ "${ok:-0}" -ne 1 ]; then
    echo "[peers] logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

free_port() {
  "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
wait_listen() {  # port, seconds: until something listens on 127.0.0.1:port (ss; no probe connect)
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    ss -ltnH "sport = :$1" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  return 1
}
quote() { local out="" a; for a in "$@"; do out+="${out:+ }$(printf '%q' "$a")"; done; echo "$out"; }
# sample TOOL TRANSPORT OP SIZE BATCH REP RAW_VALUE RAW_UNIT UNIT_BYTES RAW_LINE COMMAND EXTRA_JSON
sample() {
  jq -nc --arg tool "$1" --arg transport "$2" --arg op "$3" --argjson size "$4" \
    --argjson batch "$5" --argjson rep "$6" --argjson raw_value "$7" --arg raw_unit "$8" \
    --argjson unit_bytes "$9" --arg raw_line "${10}" --arg command "${11}" --argjson extra "${12}" \
    --argjson load "$(cut -d' ' -f1 /proc/loadavg)" \
    '{tool:$tool, transport:$transport, op:$op, size_bytes:$size, batch:$batch, rep:$rep,
      raw_value:$raw_value, raw_unit:$raw_unit, raw_unit_bytes_per_s:$unit_bytes,
      gbytes_per_s:($raw_value * $unit_bytes / 1e9), raw_line:$raw_line, command:$command,
      loadavg_1m:$load} + $extra' >> "$SAMPLES"
}
failures=0
# The tools busy-poll on both ends: on a 2-core machine anything else running skews them a lot.
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD_START" 'BEGIN { exit !(l > 0.5) }'; then
  echo "[peers] warning: 1-minute load is $LOAD_START before starting; other work on the CPUs" \
       "skews these figures (they are recorded with the results)" >&2
fi

# --- ucx_perftest ---------------------------------------------------------------------
run_ucx() {  # transport(tcp|default) op(ucp_get|tag_bw) size batch rep
  local tls="$1" op="$2" size="$3" batch="$4" rep="$5" total n w port log slog
  if [ "$tls" = tcp ]; then total=$UCX_TCP_BYTES; else total=$UCX_SHM_BYTES; fi
  n=$((total / size))
  if ((n < 20)); then n=20; fi
  if ((n > 100000)); then n=100000; fi
  w=$((n / 10))
  if ((w < 5)); then w=5; fi
  port=$(free_port)
  local envs=(UCX_NET_DEVICES=lo)
  [ "$tls" = tcp ] && envs+=(UCX_TLS=tcp)
  [ -z "$UCX_LD_PATH" ] || envs+=("LD_LIBRARY_PATH=$UCX_LD_PATH")
  [ ${#UCX_ENV_LIST[@]} -eq 0 ] || envs+=("${UCX_ENV_LIST[@]}")
  local srv=("$PERFTEST" -p "$port")
  local cli=("$PERFTEST" 127.0.0.1 -p "$port" -t "$op" -s "$size" -n "$n" -w "$w" -O "$batch" -f)
  log="$WORK/ucx_${tls}_${op}_${size}_${batch}_${rep}.log"; slog="${log%.log}.server.log"
  env "${envs[@]}" timeout "$UCX_TIMEOUT" "${srv[@]}" > "$slog" 2>&1 &
  local spid=$!   # bounded by its own timeout; not in PIDS (its pid is reaped below)
  if ! wait_listen "$port" 10; then
    echo "[peers] ucx_perftest server did not listen on $port (see $slog)" >&2
    kill "$spid" 2>/dev/null || true; failures=$((failures + 1)); return 0
  fi
  local rc=0
  env "${envs[@]}" UCX_LOG_LEVEL=info timeout "$UCX_TIMEOUT" "${cli[@]}" > "$log" 2>&1 || rc=$?
  wait "$spid" 2>/dev/null || true
  # -f prints one line: iterations, latency 50%/avg/overall (usec), bandwidth avg/overall
  # ("MB/s", which ucx_perftest computes as bytes/2^20), message rate avg/overall.
  local line
  # (a column can read "inf" when a report interval held no completed iteration)
  line=$(grep -E '^ *[0-9]+( +([0-9.]+|inf|-?nan)){7} *$' "$log" | tail -1 || true)
  [[ "$(awk '{print $6}' <<< "$line")" =~ ^[0-9]+(\.[0-9]+)?$ ]] || line=""
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    echo "[peers] ucx_perftest $tls $op size=$size batch=$batch failed (rc=$rc, see $log)" >&2
    failures=$((failures + 1)); return 0
  fi
  local bw ep_cfg
  bw=$(awk '{print $6}' <<< "$line")
  ep_cfg=$(sed -n 's/.*ep_cfg\[[0-9]*\]: *//p' "$log" | head -1)
  sample ucx_perftest "$tls" "$op" "$size" "$batch" "$rep" "$bw" "MB/s (ucx_perftest: MiB/s)" \
    1048576 "$line" "$(quote "${envs[@]}" "${cli[@]}")" \
    "$(jq -nc --arg s "$(quote "${envs[@]}" "${srv[@]}")" --arg ep "$ep_cfg" --argjson n "$n" \
       --argjson w "$w" --arg v "$ucx_version" --arg e "$UCX_ENV" \
       '{server_command:$s, ucx_ep_cfg:$ep, iterations:$n, warmup:$w, ucx_version:$v,
         ucx_env:$e, raw_field:"bandwidth overall (6th column)"}')"
  printf '[peers]   ucx %-7s %-7s size=%-9s batch=%-3s rep=%s  %10s MiB/s  %s\n' \
    "$tls" "$op" "$size" "$batch" "$rep" "$bw" "$ep_cfg"
}

if want_tool ucx; then
  read -r -a UCX_ENV_LIST <<< "$UCX_ENV"
  if [ -n "$UCX_PREFIX" ]; then
    PERFTEST="$UCX_PREFIX/bin/ucx_perftest"; UCX_INFO="$UCX_PREFIX/bin/ucx_info"
    UCX_LD_PATH="$UCX_PREFIX/lib"
    # (the wheel's zip does not keep the executable bit: scripts/build_ucx_cuda.sh sets it)
    [ -x "$PERFTEST" ] || { echo "no executable $PERFTEST" >&2; exit 1; }
  else
    PERFTEST=ucx_perftest; UCX_INFO=ucx_info; UCX_LD_PATH=""
    command -v ucx_perftest >/dev/null ||
      { echo "ucx_perftest missing: scripts/install_peer_baselines.sh" >&2; exit 1; }
  fi
  ucx_version=$(env ${UCX_LD_PATH:+LD_LIBRARY_PATH="$UCX_LD_PATH"} "$UCX_INFO" -v |
    sed -n 's/^# \(Library \)\{0,1\}[Vv]ersion:\{0,1\} //p' | head -1)
  echo "[peers] ucx_perftest (UCX $ucx_version${UCX_ENV:+, $UCX_ENV}): reps=$REPS;" \
       "transports: $UCX_TRANSPORTS; tcp: $UCX_TCP_OPS; default: ucp_get"
  IFS=, read -r -a TCP_OPS <<< "$UCX_TCP_OPS"
  IFS=, read -r -a UCX_TLS_LIST <<< "$UCX_TRANSPORTS"
  for tls in "${UCX_TLS_LIST[@]}"; do
    if [ "$tls" = tcp ]; then ops=("${TCP_OPS[@]}"); else ops=(ucp_get); fi
    for op in "${ops[@]}"; do
      for size in "${SIZE_LIST[@]}"; do
        for batch in "${BATCH_LIST[@]}"; do
          for ((rep = 1; rep <= REPS; rep++)); do run_ucx "$tls" "$op" "$size" "$batch" "$rep"; done
        done
      done
    done
  done
fi

# --- Mooncake transfer_engine_bench ------------------------------------------------------
if want_tool mooncake; then
  [ -x "$VENV/bin/python3" ] ||
    { echo "no venv at $VENV: scripts/install_peer_baselines.sh" >&2; exit 1; }
  MC_DIR=$("$VENV/bin/python3" -c 'import os,importlib.util as u;print(os.path.dirname(u.find_spec("mooncake").origin))')
  MC_VERSION=$("$VENV/bin/python3" -c 'import importlib.metadata as m;print(m.version("mooncake-transfer-engine-non-cuda"))')
  TEB="$MC_DIR/transfer_engine_bench"; MASTER="$MC_DIR/mooncake_master"
  for b in "$TEB" "$MASTER"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
  export MC_TCP_BIND_ADDRESS=127.0.0.1
  THREADS=1
  max_size=0; max_batch=0
  for s in "${SIZE_LIST[@]}"; do if ((s > max_size)); then max_size=$s; fi; done
  for b in "${BATCH_LIST[@]}"; do if ((b > max_batch)); then max_batch=$b; fi; done
  target_buf=$((max_size * max_batch * THREADS))
  if ((target_buf < 1 << 24)); then target_buf=$((1 << 24)); fi

  http_port=$(free_port); rpc_port=$(free_port); metrics_port=$(free_port)
  while [ "$rpc_port" = "$http_port" ]; do rpc_port=$(free_port); done
  while [ "$metrics_port" = "$http_port" ] || [ "$metrics_port" = "$rpc_port" ]; do metrics_port=$(free_port); done
  META="http://127.0.0.1:$http_port/metadata"
  master_cmd=("$MASTER" --enable_http_metadata_server=true --http_metadata_server_host=127.0.0.1
    "--http_metadata_server_port=$http_port" --rpc_address=127.0.0.1 "--rpc_port=$rpc_port"
    --metrics_host=127.0.0.1 "--metrics_port=$metrics_port" --enable_metric_reporting=false)
  timeout 3600 "${master_cmd[@]}" > "$WORK/mooncake_master.log" 2>&1 &
  PIDS+=("$!")
  wait_listen "$http_port" 20 ||
    { echo "[peers] mooncake_master did not serve metadata on $http_port (see $WORK/mooncake_master.log)" >&2; exit 1; }

  tname="127.0.0.1:$(free_port)"   # a name (host:port) for the target's segment
  target_cmd=("$TEB" --mode=target --protocol=tcp "--metadata_server=$META"
    "--local_server_name=$tname" "--buffer_size=$target_buf")
  timeout 3600 "${target_cmd[@]}" > "$WORK/mooncake_target.log" 2>&1 &
  tpid=$!; PIDS+=("$tpid")
  key=$(jq -rn --arg k "mooncake/ram/$tname" '$k|@uri')
  registered=0
  for ((i = 0; i < 300; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$META?key=$key" || true)
    [ "$code" = 200 ] && { registered=1; break; }
    kill -0 "$tpid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$registered" -ne 1 ]; then
    echo "[peers] Mooncake target did not register segment $tname (see $WORK/mooncake_target.log)" >&2
    exit 1
  fi
  echo "[peers] mooncake $MC_VERSION: master metadata $META, target $tname (buffer $target_buf B), reps=$REPS"

  run_mc() {  # size batch rep
    local size="$1" batch="$2" rep="$3" log rc=0 line iname
    iname="127.0.0.1:$(free_port)"
    local cmd=("$TEB" --mode=initiator --protocol=tcp --operation=read "--metadata_server=$META"
      "--local_server_name=$iname" "--segment_id=$tname" "--block_size=$size"
      "--batch_size=$batch" "--threads=$THREADS" "--duration=$DURATION"
      "--buffer_size=$((size * batch * THREADS))" --report_unit=GB --report_precision=4)
    log="$WORK/mooncake_${size}_${batch}_${rep}.log"
    timeout $((DURATION + 60)) "${cmd[@]}" > "$log" 2>&1 || rc=$?
    # e.g. "... Test completed: duration 3.01, batch count 658, throughput 3.6600 GB/s"
    line=$(grep -E 'Test completed: duration [0-9.]+, batch count [0-9]+, throughput [0-9.]+ GB/s' "$log" | tail -1 || true)
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
      echo "[peers] transfer_engine_bench size=$size batch=$batch failed (rc=$rc, see $log)" >&2
      failures=$((failures + 1)); return 0
    fi
    local dur cnt tp
    dur=$(sed -E 's/.*duration ([0-9.]+),.*/\1/' <<< "$line")
    cnt=$(sed -E 's/.*batch count ([0-9]+),.*/\1/' <<< "$line")
    tp=$(sed -E 's/.*throughput ([0-9.]+) GB\/s.*/\1/' <<< "$line")
    sample mooncake_transfer_engine_bench tcp read "$size" "$batch" "$rep" "$tp" "GB/s" \
      1000000000 "$line" \
      "$(quote MC_TCP_BIND_ADDRESS=127.0.0.1 "${cmd[@]}")" \
      "$(jq -nc --arg m "$(quote "${master_cmd[@]}")" --arg t "$(quote MC_TCP_BIND_ADDRESS=127.0.0.1 "${target_cmd[@]}")" \
         --arg v "$MC_VERSION" --argjson d "$dur" --argjson c "$cnt" --argjson th "$THREADS" \
         --argjson s "$size" --argjson b "$batch" \
         '{server_command:$t, metadata_command:$m, mooncake_version:$v, threads:$th,
           duration_s:$d, batch_count:$c,
           gbytes_per_s_from_counts:($c * $b * $s / $d / 1e9)}')"
    printf '[peers]   mooncake tcp size=%-9s batch=%-3s rep=%s  %10s GB/s (batches=%s in %ss)\n' \
      "$size" "$batch" "$rep" "$tp" "$cnt" "$dur"
  }
  for size in "${SIZE_LIST[@]}"; do
    for batch in "${BATCH_LIST[@]}"; do
      for ((rep = 1; rep <= REPS; rep++)); do run_mc "$size" "$batch" "$rep"; done
    done
  done
fi

# --- medians -> JSON ------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
"$PY" - "$SAMPLES" "$OUT" "$REPS" "$lo_mtu_now" "$([ -n "${KVSTASH_PEERS_IN_NETNS:-}" ] && echo 1 || echo 0)" "$LOAD_START" <<'EOF'
import json, os, platform, statistics, sys, time
samples_path, out, reps, mtu, netns, load_start = sys.argv[1:7]
samples = [json.loads(l) for l in open(samples_path) if l.strip()]
groups = {}
for s in samples:
    groups.setdefault((s["tool"], s["transport"], s["op"], s["size_bytes"], s["batch"]), []).append(s)
load1 = os.getloadavg()[0]
records = []
for key, ss in groups.items():
    vals = [s["gbytes_per_s"] for s in ss]
    med = statistics.median(vals)
    rep = min(ss, key=lambda s: abs(s["gbytes_per_s"] - med))  # the run closest to the median
    rec = {k: v for k, v in rep.items() if k != "rep"}
    rec["gbytes_per_s"] = round(med, 4)
    rec["raw_value"] = statistics.median([s["raw_value"] for s in ss])
    rec["reps_requested"] = int(reps)
    rec["reps"] = len(ss)
    rec["samples_gbytes_per_s"] = [round(v, 4) for v in vals]
    rec["raw_lines"] = [s["raw_line"] for s in ss]
    rec["loadavg_1m"] = [s["loadavg_1m"] for s in ss]  # 1-minute load when each run ended
    rec["host"] = {"nproc": os.cpu_count(), "kernel": platform.release(),
                   "netns": netns == "1", "lo_mtu": mtu, "loadavg_1m_at_start": float(load_start),
                   "loadavg_1m_at_end": round(load1, 2),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    records.append(rec)
with open(out, "w") as f:
    json.dump(records, f, indent=1)
    f.write("\n")
print(f"[peers] wrote {len(records)} records ({len(samples)} runs) to {out}")
print(f"{'tool':32} {'transport':9} {'op':10} {'size':>9} {'batch':>5} {'GB/s':>9}")
for r in records:
    print(f"{r['tool']:32} {r['transport']:9} {r['op']:10} {r['size_bytes']:>9} {r['batch']:>5} {r['gbytes_per_s']:>9.3f}")
EOF
ok=1
if [ "$failures" -gt 0 ]; then
  echo "[peers] $failures run(s) failed; their points have fewer reps or are missing" >&2
  ok=0
  exit 1
fi
