#!/usr/bin/env python3
"""Joins peer_bench's results with the peers' baselines into one table with ratios.

    peer_table.py PEER_TRANSFER_JSON PEER_BASELINES_JSON[,MORE_BASELINES_JSON...] OUT_JSON

Prints markdown tables (transport throughput; remote Get end to end; each UCX tcp read path
against its own ucx_perftest bound) and writes OUT_JSON.

The bound of each path (BOUND_OP): Read (gets) against ucp_get with -O batch, the same RMA
operation; Fetch (the serving side sends eager active messages) and FetchInPlace (rendezvous
active messages received into place) against ucp_am_bw with -O batch, the same UCP active-message
API streaming the same sizes. Where the baselines hold a test more than once (the same UCX with
other UCX_* settings, --ucx-env), the higher figure is the bound. Baselines are matched to
peer_bench's UCX version (major.minor) when both say it. tag_bw (two-sided, rendezvous) is shown
as a reference for every path.
Goals (the data-plane issue): KVStash UCX over TCP >= 1.2x Mooncake TE at >= 1 MiB and >= 80% of
ucx_perftest on the same link; a remote Get of 2 MiB (here: the nearest measured sizes) within
1.5x of a local SSD hit.
"""
import json
import sys

# read_op (peer_bench --read-ops) -> the ucx_perftest test that bounds it.
BOUND_OP = {"get": "ucp_get", "fetch": "ucp_am_bw", "fetch_inplace": "ucp_am_bw"}
GOAL = 0.8  # of the bound (the data-plane issue)


def minor(version):
    return ".".join(str(version).split(".")[:2]) if version else None


def size_name(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def bounds(ours, base):
    """UCX tcp rows of every read op against the ucx_perftest test that bounds it."""
    want = minor(ours.get("ucx_version"))

    def best(op, size, batch):
        hits = [r for r in base
                if (r["tool"], r["transport"], r["op"], r["size_bytes"], r["batch"]) ==
                ("ucx_perftest", "tcp", op, size, batch)
                and (want is None or r.get("ucx_version") is None
                     or minor(r["ucx_version"]) == want)]
        return max(hits, key=lambda r: r["gbytes_per_s"]) if hits else None

    rows = []
    for r in ours.get("transport", []):
        op = r.get("read_op")
        if not r["path"].startswith("ucx_tcp") or r["path"].endswith("_queued") or op not in BOUND_OP:
            continue
        b = best(BOUND_OP[op], r["size_bytes"], r["batch"])
        t = best("tag_bw", r["size_bytes"], r["batch"])
        row = {"path": r["path"], "read_op": op, "size_bytes": r["size_bytes"],
               "batch": r["batch"], "kvstash_gbytes_per_s": r["gbytes_per_s"],
               "kvstash_reps": r.get("reps"), "ucx_version": ours.get("ucx_version"),
               "bound_op": BOUND_OP[op],
               "bound_gbytes_per_s": b["gbytes_per_s"] if b else None,
               "bound_ucx_version": b.get("ucx_version") if b else None,
               "bound_ucx_env": b.get("ucx_env", "") if b else None,
               "bound_command": b.get("command") if b else None,
               "tag_bw_gbytes_per_s": t["gbytes_per_s"] if t else None,
               "tag_bw_ucx_env": t.get("ucx_env", "") if t else None}
        row["vs_bound"] = (r["gbytes_per_s"] / row["bound_gbytes_per_s"]
                           if row["bound_gbytes_per_s"] else None)
        row["vs_tag_bw"] = (r["gbytes_per_s"] / row["tag_bw_gbytes_per_s"]
                            if row["tag_bw_gbytes_per_s"] else None)
        rows.append(row)
    order = list(BOUND_OP)
    rows.sort(key=lambda x: (order.index(x["read_op"]), x["size_bytes"], x["batch"]))
    return rows


def main():
    ours = json.load(open(sys.argv[1]))
    base = []
    for path in sys.argv[2].split(","):
        base += json.load(open(path))

    def baseline(tool, transport, op, size, batch):
        for r in base:
            if (r["tool"], r["transport"], r["op"], r["size_bytes"], r["batch"]) == (
                    tool, transport, op, size, batch):
                return r["gbytes_per_s"]
        return None

    rows = []
    for r in ours.get("transport", []):
        if r["path"] not in ("ucx_tcp", "ucx_default"):
            continue
        tcp = r["path"] == "ucx_tcp"
        transport = "tcp" if tcp else "default"
        row = {
            "path": r["path"], "size_bytes": r["size_bytes"], "batch": r["batch"],
            "kvstash_gbytes_per_s": r["gbytes_per_s"],
            "memcpy_gbytes_per_s": r["memcpy_gbytes_per_s"],
            "ucx_perftest_get_gbytes_per_s": baseline("ucx_perftest", transport, "ucp_get",
                                                      r["size_bytes"], r["batch"]),
            "ucx_perftest_tag_bw_gbytes_per_s": baseline("ucx_perftest", transport, "tag_bw",
                                                         r["size_bytes"], r["batch"]),
            "mooncake_te_gbytes_per_s": baseline("mooncake_transfer_engine_bench", "tcp", "read", r["size_bytes"],
                                                 r["batch"]),
        }
        for key in ("ucx_perftest_get", "ucx_perftest_tag_bw", "mooncake_te", "memcpy"):
            b = row[f"{key}_gbytes_per_s"]
            row[f"vs_{key}"] = (row["kvstash_gbytes_per_s"] / b) if b else None
        rows.append(row)

    def f(x, digits=2):
        return "-" if x is None else f"{x:.{digits}f}"

    print("| path | size | batch | KVStash GB/s | Mooncake TE GB/s | x Mooncake | "
          "ucx_perftest get | x get | ucx_perftest tag_bw | x tag_bw | memcpy | x memcpy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {size_name(r['size_bytes'])} | {r['batch']} | "
              f"{f(r['kvstash_gbytes_per_s'])} | {f(r['mooncake_te_gbytes_per_s'])} | "
              f"{f(r['vs_mooncake_te'])} | {f(r['ucx_perftest_get_gbytes_per_s'])} | "
              f"{f(r['vs_ucx_perftest_get'])} | {f(r['ucx_perftest_tag_bw_gbytes_per_s'])} | "
              f"{f(r['vs_ucx_perftest_tag_bw'])} | {f(r['memcpy_gbytes_per_s'])} | "
              f"{f(r['vs_memcpy'])} |")

    gets = ours.get("remote_get", [])
    get_rows = []
    print()
    print("| size | batch | local CPU ms | local SSD ms | peer UCX tcp ms | peer UCX default ms | "
          "peer gRPC ms | UCX tcp / SSD |")
    print("|---|---|---|---|---|---|---|---|")
    keys = sorted({(g["size_bytes"], g["batch"]) for g in gets})
    for size, batch in keys:
        by = {g["path"]: g["p50_ms"] for g in gets if (g["size_bytes"], g["batch"]) == (size, batch)}
        ratio = (by.get("peer_ucx_tcp") / by["local_ssd"]) if by.get("local_ssd") else None
        get_rows.append({"size_bytes": size, "batch": batch, "p50_ms": by,
                         "peer_ucx_tcp_vs_local_ssd": ratio})
        print(f"| {size_name(size)} | {batch} | {f(by.get('local_cpu'), 3)} | "
              f"{f(by.get('local_ssd'), 3)} | {f(by.get('peer_ucx_tcp'), 3)} | "
              f"{f(by.get('peer_ucx_default'), 3)} | {f(by.get('peer_grpc'), 3)} | {f(ratio)} |")
    # The reader's progress A/B (peer_bench --client-progress caller,queued), when measured.
    by_path = {(r["path"], r["size_bytes"], r["batch"]): r["gbytes_per_s"]
               for r in ours.get("transport", [])}
    progress_rows = []
    for (path, size, batch), queued in sorted(by_path.items()):
        if not path.endswith("_queued"):
            continue
        caller = by_path.get((path[:-len("_queued")], size, batch))
        progress_rows.append({"path": path[:-len("_queued")], "size_bytes": size, "batch": batch,
                              "caller_gbytes_per_s": caller, "queued_gbytes_per_s": queued,
                              "caller_vs_queued": (caller / queued) if caller and queued else None})
    if progress_rows:
        print()
        print("| path | size | batch | caller-driven GB/s | progress thread GB/s | ratio |")
        print("|---|---|---|---|---|---|")
        for r in progress_rows:
            print(f"| {r['path']} | {size_name(r['size_bytes'])} | {r['batch']} | "
                  f"{f(r['caller_gbytes_per_s'])} | {f(r['queued_gbytes_per_s'])} | "
                  f"{f(r['caller_vs_queued'])} |")
    # The data plane's two ways (peer_bench --read-ops fetch,get): the serving side sends into the
    # reader's memory (the path's own rows) against the reader's gets (<path>_get).
    op_rows = []
    for (path, size, batch), get in sorted(by_path.items()):
        if not path.endswith("_get"):
            continue
        fetch = by_path.get((path[:-len("_get")], size, batch))
        op_rows.append({"path": path[:-len("_get")], "size_bytes": size, "batch": batch,
                        "fetch_gbytes_per_s": fetch, "get_gbytes_per_s": get,
                        "fetch_vs_get": (fetch / get) if fetch and get else None})
    if op_rows:
        print()
        print("| path | size | batch | Fetch (peer sends) GB/s | Read (gets) GB/s | ratio |")
        print("|---|---|---|---|---|---|")
        for r in op_rows:
            print(f"| {r['path']} | {size_name(r['size_bytes'])} | {r['batch']} | "
                  f"{f(r['fetch_gbytes_per_s'])} | {f(r['get_gbytes_per_s'])} | "
                  f"{f(r['fetch_vs_get'])} |")
    bound_rows = bounds(ours, base)
    if bound_rows:
        print()
        print(f"UCX {ours.get('ucx_version', '?')} over tcp, each path against its ucx_perftest "
              f"bound (ucp_get for Read, ucp_am_bw for Fetch and FetchInPlace; -O = batch):")
        print()
        print("| path | size | batch | KVStash GB/s | bound | bound GB/s | x bound | "
              "tag_bw GB/s | x tag_bw |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in bound_rows:
            print(f"| {r['read_op']} | {size_name(r['size_bytes'])} | {r['batch']} | "
                  f"{f(r['kvstash_gbytes_per_s'])} | {r['bound_op']} | "
                  f"{f(r['bound_gbytes_per_s'])} | {f(r['vs_bound'])} | "
                  f"{f(r['tag_bw_gbytes_per_s'])} | {f(r['vs_tag_bw'])} |")
        for op in BOUND_OP:
            mine = [r for r in bound_rows if r["read_op"] == op and r["vs_bound"] is not None]
            if mine:
                met = sum(r["vs_bound"] >= GOAL for r in mine)
                print(f"{op}: >= {GOAL:.0%} of {BOUND_OP[op]} at {met} of {len(mine)} points")
    json.dump({"transport": rows, "remote_get": get_rows, "client_progress": progress_rows,
               "read_ops": op_rows, "bounds": bound_rows},
              open(sys.argv[3], "w"), indent=2)
    print(f"\nwrote {sys.argv[3]}")


if __name__ == "__main__":
    main()
