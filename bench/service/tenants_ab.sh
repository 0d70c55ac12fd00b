#!/usr/bin/env bash
# Same-binary A/B of what tenants cost the data path: one cachesvc in single-tenant mode (the
# shared-memory path and the gRPC byte streams) and one with --tokens-file (multi-tenant: no
# shared memory, every call authenticated by a bearer token, so only the byte streams), both on
# unix sockets, measured with `kvstash bench` (2 MiB objects, 64 per path), REPS repetitions
# interleaved. Prints the bench tables; results in bench/results/tenants_ab.txt when saved.
#   bench/service/tenants_ab.sh [BUILD_DIR] [REPS]
set -euo pipefail
B="${1:-build/release}"
REPS="${2:-3}"
W="$(mktemp -d /tmp/kvstash-tenants-ab.XXXXXX)"
trap 'kill $P1 $P2 2>/dev/null || true; rm -rf "$W"' EXIT
printf 'token alpha-token-0123456789 alpha\n' >"$W/tokens"
echo alpha-token-0123456789 >"$W/alpha.token"
common=(--metrics-port 0 --cpu-capacity 1GiB --ssd-capacity 0 --log-level warn)
"$B/cachesvc/cachesvc" --listen "unix://$W/s.sock" --data-dir "$W/s" "${common[@]}" & P1=$!
"$B/cachesvc/cachesvc" --listen "unix://$W/m.sock" --data-dir "$W/m" "${common[@]}" \
  --tokens-file "$W/tokens" & P2=$!
for _ in $(seq 50); do [ -S "$W/s.sock" ] && [ -S "$W/m.sock" ] && break; sleep 0.1; done
echo "# $(date -u +%FT%TZ) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$REPS"); do
  echo "== rep $r single-tenant (shm and stream)"
  "$B/cli/kvstash" bench --target "unix://$W/s.sock" --size 2MiB --count 64 --path both | tail -4
  echo "== rep $r multi-tenant (stream only, bearer token)"
  "$B/cli/kvstash" bench --target "unix://$W/m.sock" --size 2MiB --count 64 --path both \
    --token-file "$W/alpha.token" | tail -2
done
