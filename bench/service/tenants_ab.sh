#!/usr/bin/env bash
# Same-binary A/B of what tenants cost the data path: one cachesvc in single-tenant mode and one
# with --tokens-file (multi-tenant: every call authenticated by a bearer token; the tenant has a
# cpu quota, so it has an arena of its own, mapped read-only for reads and read-write for puts),
# both on unix sockets, each measured on the shared-memory path and the gRPC byte streams with
# `kvstash bench` (2 MiB objects, 64 per path), REPS repetitions interleaved. The tenant's
# control calls go over its local control channel (the attach connection, bound to the token's
# tenant), as a single-tenant client's do. A third daemon, single-tenant with
# --local-control-connections 0, sends the control calls of the shared-memory path over gRPC
# (as tenants did before they had the channel), for reference. Prints the bench tables, then the
# medians over the repetitions of each p50 and the ratios to the single-tenant node.
#   bench/service/tenants_ab.sh [BUILD_DIR] [REPS]
set -euo pipefail
B="${1:-build/release}"
REPS="${2:-3}"
W="$(mktemp -d /tmp/kvstash-tenants-ab.XXXXXX)"
trap 'kill $P1 $P2 $P3 2>/dev/null || true; rm -rf "$W"' EXIT
printf 'token alpha-token-0123456789 alpha\nquota alpha cpu=1GiB\n' >"$W/tokens"
echo alpha-token-0123456789 >"$W/alpha.token"
common=(--metrics-port 0 --cpu-capacity 1GiB --ssd-capacity 0 --log-level warn)
"$B/cachesvc/cachesvc" --listen "unix://$W/s.sock" --data-dir "$W/s" "${common[@]}" & P1=$!
"$B/cachesvc/cachesvc" --listen "unix://$W/m.sock" --data-dir "$W/m" "${common[@]}" \
  --tokens-file "$W/tokens" & P2=$!
"$B/cachesvc/cachesvc" --listen "unix://$W/g.sock" --data-dir "$W/g" "${common[@]}" \
  --local-control-connections 0 & P3=$!
for _ in $(seq 50); do
  [ -S "$W/s.sock" ] && [ -S "$W/m.sock" ] && [ -S "$W/g.sock" ] && break
  sleep 0.1
done
echo "# $(date -u +%FT%TZ) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$REPS"); do
  echo "== rep $r single-tenant"
  "$B/cli/kvstash" bench --target "unix://$W/s.sock" --size 2MiB --count 64 --path both |
    tail -4 | sed 's/^/single /' | tee -a "$W/rows"
  echo "== rep $r single-tenant, control calls over gRPC (no local control channel)"
  "$B/cli/kvstash" bench --target "unix://$W/g.sock" --size 2MiB --count 64 --path shm |
    tail -2 | sed 's/^/grpcctl /' | tee -a "$W/rows"
  echo "== rep $r multi-tenant (own arena, bearer token)"
  "$B/cli/kvstash" bench --target "unix://$W/m.sock" --size 2MiB --count 64 --path both \
    --token-file "$W/alpha.token" | tail -4 | sed 's/^/multi /' | tee -a "$W/rows"
done
echo "# medians over $REPS repetitions of the p50 ms of each path and operation"
awk '{ k = $2 " " $3; v[$1 " " k] = v[$1 " " k] " " $5; keys[k] = 1 }
  function median(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    printf "%-12s %10s %10s %10s %13s %13s\n", "path op", "single", "grpcctl", "multi",
      "multi/single", "multi/grpcctl"
    for (k in keys) {
      s = median(v["single " k]); m = median(v["multi " k])
      if (("grpcctl " k) in v) {
        g = median(v["grpcctl " k])
        printf "%-12s %10.3f %10.3f %10.3f %13.2f %13.2f\n", k, s, g, m, m / s, m / g
      } else {
        printf "%-12s %10.3f %10s %10.3f %13.2f %13s\n", k, s, "-", m, m / s, "-"
      }
    }
  }' "$W/rows" | sort
