#!/usr/bin/env python3
"""Joins peer_bench's remote_get results with Mooncake Store's into one table with ratios.

    store_table.py REMOTE_GET_JSON MOONCAKE_STORE_JSON OUT_JSON

Both are p50 latencies of one call for `batch` objects of `size` that live on another node
(scripts/bench_peer_store.sh). "x Mooncake" = Mooncake Store p50 / KVStash p50 (> 1: KVStash is
faster). Prints markdown on stdout and writes OUT_JSON.
"""
import json
import sys


def size_name(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def main():
    ours = json.load(open(sys.argv[1])).get("remote_get", [])
    theirs = json.load(open(sys.argv[2]))

    def ours_ms(path, size, batch):
        for r in ours:
            if (r["path"], r["size_bytes"], r["batch"]) == (path, size, batch):
                return r["p50_ms"]
        return None

    rows = []
    for m in theirs:
        size, batch = m["size_bytes"], m["batch"]
        row = {"size_bytes": size, "batch": batch, "mooncake_store_p50_ms": m["p50_ms"]}
        for path in ("peer_ucx_tcp", "peer_ucx_default", "peer_grpc", "local_ssd", "local_cpu"):
            row[path + "_p50_ms"] = ours_ms(path, size, batch)
        t = row["peer_ucx_tcp_p50_ms"]
        row["x_mooncake_ucx_tcp"] = m["p50_ms"] / t if t else None
        rows.append(row)
    json.dump(rows, open(sys.argv[3], "w"), indent=2)

    def f(v, fmt="%.3f"):
        return "-" if v is None else fmt % v

    print("| size | batch | KVStash peer UCX tcp ms | Mooncake Store (tcp) ms | x Mooncake "
          "| KVStash peer UCX default ms | KVStash peer gRPC ms | local SSD ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {size_name(r['size_bytes'])} | {r['batch']} | {f(r['peer_ucx_tcp_p50_ms'])} "
              f"| {f(r['mooncake_store_p50_ms'])} | {f(r['x_mooncake_ucx_tcp'], '%.2f')} "
              f"| {f(r['peer_ucx_default_p50_ms'])} | {f(r['peer_grpc_p50_ms'])} "
              f"| {f(r['local_ssd_p50_ms'])} |")


if __name__ == "__main__":
    main()
