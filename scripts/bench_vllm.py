#!/usr/bin/env python3
"""vLLM-CPU time to first token with and without KVStash (docs/benchmarks-vllm.md).

For 1k- and 2k-token prompts (different text, so they share no prefix), each configuration in
fresh engine processes (tests/vllm/vllm_runner.py, max_tokens=1, so a request's latency is its
TTFT):
  recompute      no connector, vLLM prefix cache off
  vllm_prefix    no connector, vLLM prefix cache on (after one cold request)
  kvstash_cpu    KVStash connector, prefix cache off, a fresh process after another stored them
  kvstash_ssd    the same after a cachesvc restart (the CPU tier is empty: SSD copies), first
                 request of a fresh process, one sample per process
  example_disk   vLLM's ExampleConnector (safetensors files on disk), a fresh process
  kvstash_miss   KVStash connector on prompts it has never seen (lookup miss + store), compared
                 with recompute; plus the connector's own time per request from its counters
Writes JSON (medians and every sample) to the path given.

  bench_vllm.py OUT.json [--reps N] [--ssd-procs N] [--quick [--lengths 1000,2000]]

--quick runs four engine processes instead of twelve (for a busy machine): recompute of the hit
and miss prompts in one process, vLLM's prefix cache, one KVStash process that stores the miss
and hit prompts (its misses are the kvstash_miss row), and a fresh KVStash process that hits;
no SSD and no ExampleConnector rows.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "vllm"))
from vllm_testing import CacheService, connector, prompt_tokens, run_engine  # noqa: E402

LENGTHS = (1000, 2000)


def med(xs):
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ssd-procs", type=int, default=2)
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    R = args.reps
    lengths = tuple(int(x) for x in args.lengths.split(","))
    if args.quick:
        return quick(args.out, R, lengths)
    prompts = {n: prompt_tokens(n, offset=i * 3000) for i, n in enumerate(LENGTHS)}
    # Disjoint text for every miss prompt (offsets 2100 tokens apart, each at most 2000 long).
    misses = {n: [prompt_tokens(n, offset=7000 + (i * R + j) * 2100)
                  for j in range(R)] for i, n in enumerate(LENGTHS)}
    res = {"reps": R, "lengths": list(LENGTHS), "samples": {}, "median_s": {}}

    def record(name, n, xs):
        res["samples"].setdefault(name, {})[str(n)] = xs
        res["median_s"].setdefault(name, {})[str(n)] = med(xs)
        print(f"[bench_vllm] {name:13s} {n:5d} tokens: median {med(xs):.3f} s  {xs}",
              flush=True)

    def split(r, counts):
        out, i = [], 0
        for c in counts:
            out.append(r["ttft_s"][i:i + c])
            i += c
        return out

    seq = [prompts[n] for n in LENGTHS for _ in range(R)]
    r = run_engine({"prompts": seq, "max_tokens": 1})
    for n, xs in zip(LENGTHS, split(r, [R] * len(LENGTHS))):
        record("recompute", n, xs)

    seq = [prompts[n] for n in LENGTHS for _ in range(R + 1)]
    r = run_engine({"prompts": seq, "max_tokens": 1, "prefix_caching": True})
    for n, xs in zip(LENGTHS, split(r, [R + 1] * len(LENGTHS))):
        record("vllm_prefix", n, xs[1:])

    svc = CacheService(cpu_capacity="1GiB", ssd_capacity="2GiB")
    try:
        tmp = tempfile.mkdtemp()
        st = os.path.join(tmp, "store")
        run_engine({"prompts": [prompts[n] for n in LENGTHS], "max_tokens": 1,
                    "connector": connector(svc, st), "stats_path": st})
        st = os.path.join(tmp, "cpu")
        seq = [prompts[n] for n in LENGTHS for _ in range(R)]
        r = run_engine({"prompts": seq, "max_tokens": 1, "connector": connector(svc, st),
                        "stats_path": st})
        res["kvstash_cpu_stats"] = r["stats"]
        for n, xs in zip(LENGTHS, split(r, [R] * len(LENGTHS))):
            record("kvstash_cpu", n, xs)

        ssd = {n: [] for n in LENGTHS}
        for k in range(args.ssd_procs):
            svc.restart()
            st = os.path.join(tmp, f"ssd{k}")
            r = run_engine({"prompts": [prompts[n] for n in LENGTHS], "max_tokens": 1,
                            "connector": connector(svc, st), "stats_path": st})
            res.setdefault("kvstash_ssd_stats", []).append(r["stats"])
            for n, x in zip(LENGTHS, r["ttft_s"]):
                ssd[n].append(x)
        for n in LENGTHS:
            record("kvstash_ssd", n, ssd[n])

        st = os.path.join(tmp, "miss")
        seq = [p for n in LENGTHS for p in misses[n]]
        r = run_engine({"prompts": seq, "max_tokens": 1, "connector": connector(svc, st),
                        "stats_path": st})
        res["kvstash_miss_stats"] = r["stats"]
        for n, xs in zip(LENGTHS, split(r, [R] * len(LENGTHS))):
            record("kvstash_miss", n, xs)
        r = run_engine({"prompts": seq, "max_tokens": 1})
        for n, xs in zip(LENGTHS, split(r, [R] * len(LENGTHS))):
            record("miss_baseline", n, xs)
    finally:
        svc.close()

    disk = tempfile.mkdtemp(prefix="kvst-example-")
    run_engine({"prompts": [prompts[n] for n in LENGTHS], "max_tokens": 1,
                "example_connector": disk})
    seq = [prompts[n] for n in LENGTHS for _ in range(R)]
    r = run_engine({"prompts": seq, "max_tokens": 1, "example_connector": disk})
    for n, xs in zip(LENGTHS, split(r, [R] * len(LENGTHS))):
        record("example_disk", n, xs)

    res["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "loadavg_at_end": os.getloadavg()}
    res["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"[bench_vllm] wrote {args.out}")
    return 0


def quick(out_path: str, R: int, lengths) -> int:
    """Four engine processes (module docstring). Every prompt starts at its own text offset, so
    no two share a first block (vLLM's block hashes chain from the first block)."""
    prompts = {n: prompt_tokens(n, offset=i * 3000) for i, n in enumerate(lengths)}
    misses = {n: [prompt_tokens(n, offset=7000 + (i * R + j) * 2100) for j in range(R)]
              for i, n in enumerate(lengths)}
    res = {"reps": R, "lengths": list(lengths), "mode": "quick", "samples": {}, "median_s": {},
           "loadavg_at_start": os.getloadavg()}

    def record(name, n, xs):
        res["samples"].setdefault(name, {})[str(n)] = xs
        res["median_s"].setdefault(name, {})[str(n)] = med(xs)
        print(f"[bench_vllm] {name:13s} {n:5d} tokens: median {med(xs):.3f} s  {xs}",
              flush=True)

    def chunks(r, counts):
        out, i = [], 0
        for c in counts:
            out.append(r["ttft_s"][i:i + c])
            i += c
        return out

    hits = [prompts[n] for n in lengths for _ in range(R)]
    miss = [p for n in lengths for p in misses[n]]
    r = run_engine({"prompts": hits + miss, "max_tokens": 1})
    got = chunks(r, [R] * (2 * len(lengths)))
    for k, n in enumerate(lengths):
        record("recompute", n, got[k])
        record("miss_baseline", n, got[len(lengths) + k])

    seq = [prompts[n] for n in lengths for _ in range(R + 1)]
    r = run_engine({"prompts": seq, "max_tokens": 1, "prefix_caching": True})
    for n, xs in zip(lengths, chunks(r, [R + 1] * len(lengths))):
        record("vllm_prefix", n, xs[1:])

    svc = CacheService(cpu_capacity="1GiB", ssd_capacity="2GiB")
    try:
        tmp = tempfile.mkdtemp()
        st = os.path.join(tmp, "miss")
        r = run_engine({"prompts": miss + [prompts[n] for n in lengths], "max_tokens": 1,
                        "connector": connector(svc, st), "stats_path": st})
        res["kvstash_miss_stats"] = r["stats"]
        for n, xs in zip(lengths, chunks(r, [R] * len(lengths))):
            record("kvstash_miss", n, xs)
        st = os.path.join(tmp, "cpu")
        r = run_engine({"prompts": hits, "max_tokens": 1, "connector": connector(svc, st),
                        "stats_path": st})
        res["kvstash_cpu_stats"] = r["stats"]
        for n, xs in zip(lengths, chunks(r, [R] * len(lengths))):
            record("kvstash_cpu", n, xs)
    finally:
        svc.close()
    res["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "loadavg_at_end": os.getloadavg()}
    res["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out_path, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"[bench_vllm] wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
