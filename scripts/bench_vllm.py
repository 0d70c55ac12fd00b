#!/usr/bin/env python3
"""vLLM-CPU time to first token with and without KVStash (docs/benchmarks-vllm.md).

For 1k- and 2k-token prompts (different text, so they share no prefix), each configuration in
fresh engine processes (tests/vllm/vllm_runner.py, max_tokens=1, so a request's latency is its
TTFT). Every process is warmed by one unrelated short request (100 tokens of another text, no
full block, untimed) before its timed requests, as vLLM's prefix-cache baseline is warm anyway
(its first, cold request computes the prompt); the KVStash CPU process also reports its very
first request, unwarmed, as a row of its own. Rows:
  recompute       no connector, vLLM prefix cache off
  vllm_prefix     no connector, vLLM prefix cache on (after one cold request of each prompt)
  kvstash_miss    KVStash connector on prompts it has never seen (lookup miss + store), and
  miss_baseline   the same prompts recomputed without a connector (the recompute process)
  kvstash_cpu     KVStash connector, prefix cache off, a fresh process after another stored the
                  prompts: every request loads its full blocks from cachesvc's CPU tier
  kvstash_cpu_unwarmed  that process's first request, before any warm-up
  kvstash_ssd     after a cachesvc restart (CPU tier empty: SSD copies), a fresh process; each
                  prompt is requested once (its own text), so every sample loads from SSD
  example_disk    vLLM's in-tree ExampleConnector (safetensors files on disk), a fresh process
                  after another stored them
plus the connector's own counters per process (lookup, fetch, copy, waits, hook and step times).
Seven engine processes; --quick leaves out the SSD and ExampleConnector rows (four).

  bench_vllm.py OUT.json [--reps N] [--quick] [--lengths 1000,2000]
"""

import argparse
import json
import os
import platform
import shutil
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
    ap.add_argument("--ssd-procs", type=int, default=1, help="ignored (kept for old commands)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    return run(args.out, args.reps, tuple(int(x) for x in args.lengths.split(",")),
               full=not args.quick)


def connector_share(stats):
    """The connector's own time in a process's steps: scheduler hooks (lookup, metadata) plus
    worker hooks (start_load_kv, wait_for_layer_load, wait_for_save) over the worker's step wall
    time (bind to the end of wait_for_save)."""
    w, s = stats.get("worker", {}), stats.get("scheduler", {})
    step = w.get("step_us", 0)
    own = w.get("hook_us", 0) + s.get("sched_hook_us", 0)
    return {"steps": w.get("steps", 0), "step_us": step, "worker_hook_us": w.get("hook_us", 0),
            "sched_hook_us": s.get("sched_hook_us", 0),
            "share": (own / step) if step else None}


def run(out_path: str, R: int, lengths, full: bool) -> int:
    """The processes of the module docstring. Every prompt starts at its own text offset, so no
    two share a first block (vLLM's block hashes chain from the first block)."""
    prompts = {n: prompt_tokens(n, offset=i * 3000) for i, n in enumerate(lengths)}
    L = len(lengths)
    misses = {n: [prompt_tokens(n, offset=7000 + (i * R + j) * 2100) for j in range(R)]
              for i, n in enumerate(lengths)}
    ssd = {n: [prompt_tokens(n, offset=7000 + (L * R + i * R + j) * 2100) for j in range(R)]
           for i, n in enumerate(lengths)}
    warm = prompt_tokens(100, corpus="tinystories_sample.txt")
    res = {"reps": R, "lengths": list(lengths), "mode": "full" if full else "quick",
           "warmup": "one untimed 100-token request of other text before the timed requests",
           "samples": {}, "median_s": {}, "stats": {}, "uptime": {}}

    def up(tag):
        res["uptime"][tag] = os.getloadavg()
        print(f"[bench_vllm] {tag}: load {os.getloadavg()}", flush=True)

    def record(name, n, xs):
        res["samples"].setdefault(name, {})[str(n)] = xs
        res["median_s"].setdefault(name, {})[str(n)] = med(xs)
        print(f"[bench_vllm] {name:21s} {n:5d} tokens: median {med(xs):.3f} s  {xs}",
              flush=True)

    def chunks(r, counts):
        out, i = [], 0
        for c in counts:
            out.append(r["ttft_s"][i:i + c])
            i += c
        return out

    up("start")
    hits = [prompts[n] for n in lengths for _ in range(R)]
    miss = [p for n in lengths for p in misses[n]]
    r = run_engine({"prompts": hits + miss, "max_tokens": 1, "warmup_before": {0: warm}})
    got = chunks(r, [R] * (2 * L))
    for k, n in enumerate(lengths):
        record("recompute", n, got[k])
        record("miss_baseline", n, got[L + k])
    up("after recompute")

    seq = [prompts[n] for n in lengths for _ in range(R + 1)]
    r = run_engine({"prompts": seq, "max_tokens": 1, "prefix_caching": True,
                    "warmup_before": {0: warm}})
    for n, xs in zip(lengths, chunks(r, [R + 1] * L)):
        record("vllm_prefix", n, xs[1:])
    up("after vllm_prefix")

    svc = CacheService(cpu_capacity="1GiB", ssd_capacity="2GiB")
    try:
        tmp = tempfile.mkdtemp()
        st = os.path.join(tmp, "miss")
        stores = [prompts[n] for n in lengths]
        if full:
            stores += [p for n in lengths for p in ssd[n]]
        r = run_engine({"prompts": miss + stores, "max_tokens": 1,
                        "connector": connector(svc, st), "stats_path": st,
                        "warmup_before": {0: warm}})
        res["stats"]["kvstash_miss"] = r["stats"]
        res["miss_connector_share"] = connector_share(r["stats"])
        print(f"[bench_vllm] connector's share of the miss steps: {res['miss_connector_share']}",
              flush=True)
        for n, xs in zip(lengths, chunks(r, [R] * L)):
            record("kvstash_miss", n, xs)
        up("after kvstash_miss")

        st = os.path.join(tmp, "cpu")
        first = prompts[lengths[-1]]
        r = run_engine({"prompts": [first] + hits, "max_tokens": 1,
                        "connector": connector(svc, st), "stats_path": st,
                        "warmup_before": {1: warm}})
        res["stats"]["kvstash_cpu"] = r["stats"]
        record("kvstash_cpu_unwarmed", lengths[-1], r["ttft_s"][:1])
        r["ttft_s"] = r["ttft_s"][1:]
        for n, xs in zip(lengths, chunks(r, [R] * L)):
            record("kvstash_cpu", n, xs)
        up("after kvstash_cpu")

        if full:
            svc.restart()  # graceful: the SSD index is written; the CPU tier starts empty
            st = os.path.join(tmp, "ssd")
            r = run_engine({"prompts": [p for n in lengths for p in ssd[n]], "max_tokens": 1,
                            "connector": connector(svc, st), "stats_path": st,
                            "warmup_before": {0: warm}})
            res["stats"]["kvstash_ssd"] = r["stats"]
            res["cachesvc_after_ssd"] = svc.stats()
            for n, xs in zip(lengths, chunks(r, [R] * L)):
                record("kvstash_ssd", n, xs)
            up("after kvstash_ssd")
    finally:
        svc.close()

    if full:
        disk = tempfile.mkdtemp(prefix="kvst-example-")
        try:
            run_engine({"prompts": [prompts[n] for n in lengths], "max_tokens": 1,
                        "example_connector": disk})
            r = run_engine({"prompts": hits, "max_tokens": 1, "example_connector": disk,
                            "warmup_before": {0: warm}})
            res["cached_tokens_example_disk"] = r["cached_tokens"]
            for n, xs in zip(lengths, chunks(r, [R] * L)):
                record("example_disk", n, xs)
        finally:
            shutil.rmtree(disk, ignore_errors=True)
        up("after example_disk")

    res["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "loadavg_at_end": os.getloadavg()}
    res["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out_path, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"[bench_vllm] wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
