#!/usr/bin/env python3
"""Python put_many/get_many throughput against the C++ client (docs/python.md "Benchmark").

Starts one cachesvc (unix socket: the shared-memory path), then for each workload times the
kvstash package's put_many (overwrite) and get_many (into preallocated numpy arrays) and the
C++ twin (bench/python/put_get_twin.cc) doing the same through KvClient, and prints the median
GB/s of each and the ratio Python / C++.

    PYTHONPATH=python:build/release/python $KVSTASH_CACHE/venv/bin/python \\
        bench/python/put_get_bench.py --build build/release [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import kvstash  # noqa: E402
from kvstash_testing import Service  # noqa: E402

UNIT = 8 * 2 * 8 * 64 * 2  # bytes per token of the layout below


def python_rates(client, n, nbytes, reps):
    layout = kvstash.KvLayout(num_layers=8, total_kv_heads=8, head_dim=64, num_tokens=nbytes // UNIT)
    fp = bytes(16)
    names = [kvstash.ObjectName("bench-py", fp, kvstash.independent_token_hash([i])) for i in range(n)]
    src = [np.frombuffer((np.arange(nbytes, dtype=np.uint64) * 31 + i).astype(np.uint8).tobytes(), np.uint8)
           for i in range(n)]  # fmt: skip
    dst = [np.empty(nbytes, np.uint8) for _ in range(n)]
    put, get = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        errs = client.put_many(names, layout, src, overwrite=True)
        t1 = time.perf_counter()
        res = client.get_many(names, dst)
        t2 = time.perf_counter()
        assert errs == [None] * n and all(r.ok for r in res)
        put.append(n * nbytes / (t1 - t0) / 1e9)
        get.append(n * nbytes / (t2 - t1) / 1e9)
    assert np.array_equal(src[-1], dst[-1])
    return put, get


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    os.environ["KVSTASH_BINARY_DIR"] = os.path.abspath(args.build)
    twin = os.path.join(args.build, "bench", "python", "python_put_get_twin")
    workloads = [(64, 2 << 20), (256, 256 << 10), (1024, 32 << 10)]  # objects, bytes each
    rows = []
    with Service(cpu_capacity="1GiB") as svc, kvstash.Client(svc.target) as client:
        for n, nbytes in workloads:
            py_put, py_get = python_rates(client, n, nbytes, args.reps)
            out = subprocess.run([twin, svc.target, str(n), str(nbytes), str(args.reps)],
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            cpp = json.loads(out)
            row = {
                "objects": n,
                "object_bytes": nbytes,
                "py_put_gbps": statistics.median(py_put),
                "cpp_put_gbps": statistics.median(cpp["put_gbps"]),
                "py_get_gbps": statistics.median(py_get),
                "cpp_get_gbps": statistics.median(cpp["get_gbps"]),
            }
            row["put_ratio"] = row["py_put_gbps"] / row["cpp_put_gbps"]
            row["get_ratio"] = row["py_get_gbps"] / row["cpp_get_gbps"]
            rows.append(row)
    print("| objects x size | put py / C++ (GB/s) | ratio | get py / C++ (GB/s) | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['objects']} x {r['object_bytes'] >> 10} KiB | {r['py_put_gbps']:.2f} / "
              f"{r['cpp_put_gbps']:.2f} | {r['put_ratio']:.2f} | {r['py_get_gbps']:.2f} / "
              f"{r['cpp_get_gbps']:.2f} | {r['get_ratio']:.2f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reps": args.reps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
