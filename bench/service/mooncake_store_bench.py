#!/usr/bin/env python3
"""Mooncake Store remote Get: the peer of KVStash's remote-tier Get (docs/benchmarks-transfer.md).

Runs in the venv of scripts/install_peer_baselines.sh (PyPI mooncake-transfer-engine-non-cuda):

    mooncake_store_bench.py --master BIN --sizes 1048576,33554432 --batches 1,16 --reps 3 \
        --count 16 --out FILE

What it does, all on 127.0.0.1 (run it in a private network namespace; scripts/bench_peer_store.sh
does):
  * starts `mooncake_master --enable_http_metadata_server` (metadata over HTTP, no etcd);
  * a *holder* process (node A): a MooncakeDistributedStore that mounts a segment large enough
    for every object and puts `count` objects of each size into it (protocol tcp, one replica,
    preferred_segment = its own), then waits;
  * a *reader* process (node B): a MooncakeDistributedStore with a minimal segment of its own,
    a destination buffer registered with `register_buffer`, which reads `batch` objects per call
    with `get_into` (batch 1) or `batch_get_into` (batch > 1): each call asks the master where
    the replicas are and pulls them over Mooncake's TCP transport from A into the buffer.
Each call is timed on its own; per repetition, one pass over the `count` objects of a size in
groups of `batch`; the figure is the median over all calls of all repetitions (as peer_bench's
remote_get). Results: a JSON list of {size_bytes, batch, p50_ms, gbytes_per_s, samples, ...}.
Every byte read is checked against what the holder put (a per-object pattern) once per point.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pattern(size, i):
    # A per-object byte pattern, cheap to make and to check: byte j of object i is (i*7 + j) & 255
    # on every 4096th byte, 0x5a elsewhere.
    b = bytearray(b"\x5a") * size
    for j in range(0, size, 4096):
        b[j] = (i * 7 + j // 4096) & 255
    return bytes(b)


def key(size, i):
    return f"kvstash-peer-bench/{size}/{i}"


def make_store(args, name_port, segment, local_buffer):
    from mooncake.store import MooncakeDistributedStore
    store = MooncakeDistributedStore()
    rc = store.setup(f"127.0.0.1:{name_port}", args.metadata, segment, local_buffer, "tcp", "",
                     args.master_addr)
    if rc != 0:
        print(f"setup failed: {rc}", file=sys.stderr)
        sys.exit(3)
    return store


def run_holder(args):
    from mooncake.store import ReplicateConfig
    sizes = [int(s) for s in args.sizes.split(",")]
    total = sum(sizes) * args.count
    segment = total + total // 4 + (64 << 20)
    port = free_port()
    store = make_store(args, port, segment, 64 << 20)
    cfg = ReplicateConfig()
    cfg.replica_num = 1
    cfg.preferred_segment = f"127.0.0.1:{port}"
    for size in sizes:
        for i in range(args.count):
            rc = store.put(key(size, i), pattern(size, i), cfg)
            if rc != 0:
                print(f"put {key(size, i)} failed: {rc}", file=sys.stderr)
                sys.exit(4)
    print(json.dumps({"ready": True, "segment": cfg.preferred_segment}), flush=True)
    sys.stdin.read()  # lives until the parent closes stdin
    store.close()


def run_reader(args):
    import ctypes
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    cap = max(sizes) * max(batches)
    store = make_store(args, free_port(), 16 << 20, 16 << 20)
    buf = (ctypes.c_ubyte * cap)()
    base = ctypes.addressof(buf)
    rc = store.register_buffer(base, cap)
    if rc != 0:
        print(f"register_buffer failed: {rc}", file=sys.stderr)
        sys.exit(5)
    out = []
    for size in sizes:
        for batch in batches:
            ms = []
            checked = False
            for _ in range(args.reps):
                for first in range(0, args.count - batch + 1, batch):
                    idx = list(range(first, first + batch))
                    t0 = time.perf_counter()
                    if batch == 1:
                        got = [store.get_into(key(size, first), base, size)]
                    else:
                        got = store.batch_get_into([key(size, i) for i in idx],
                                                   [base + k * size for k in range(batch)],
                                                   [size] * batch)
                    ms.append((time.perf_counter() - t0) * 1e3)
                    if any(g != size for g in got):
                        print(f"get {size} x{batch} returned {got}", file=sys.stderr)
                        sys.exit(6)
                    if not checked:
                        for k, i in enumerate(idx):
                            if ctypes.string_at(base + k * size, size) != pattern(size, i):
                                print(f"bytes of {key(size, i)} differ", file=sys.stderr)
                                sys.exit(7)
                        checked = True
            ms.sort()
            p50 = ms[len(ms) // 2]
            rec = {"size_bytes": size, "batch": batch, "p50_ms": p50,
                   "gbytes_per_s": size * batch / (p50 / 1e3) / 1e9, "samples": len(ms),
                   "min_ms": ms[0], "max_ms": ms[-1]}
            print(f"mooncake_store {size >> 20:>3} MiB x{batch:<2} p50 {p50:8.3f} ms "
                  f"{rec['gbytes_per_s']:7.2f} GB/s", flush=True)
            out.append(rec)
    store.unregister_buffer(base)
    store.close()
    print(json.dumps({"results": out}), flush=True)


def wait_http(url, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return True
        except urllib.error.HTTPError:
            return True  # the server answers (404 for an unknown key)
        except Exception:
            time.sleep(0.1)
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--role", default="run", choices=["run", "holder", "reader"])
    p.add_argument("--master", help="mooncake_master binary (role run)")
    p.add_argument("--sizes", default="1048576,33554432")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--out", default="bench/results/mooncake_store.json")
    p.add_argument("--metadata")
    p.add_argument("--master-addr")
    p.add_argument("--log", default="/tmp/mooncake_store_bench.log",
                   help="the master's, holder's and reader's output")
    p.add_argument("--timeout", type=int, default=600, help="seconds, for the whole run")
    args = p.parse_args()
    if args.role == "holder":
        return run_holder(args)
    if args.role == "reader":
        return run_reader(args)

    http, rpc, metrics = free_port(), free_port(), free_port()
    args.metadata = f"http://127.0.0.1:{http}/metadata"
    args.master_addr = f"127.0.0.1:{rpc}"
    master_cmd = [args.master, "--enable_http_metadata_server=true",
                  "--http_metadata_server_host=127.0.0.1", f"--http_metadata_server_port={http}",
                  "--rpc_address=127.0.0.1", f"--rpc_port={rpc}", "--metrics_host=127.0.0.1",
                  f"--metrics_port={metrics}", "--enable_metric_reporting=false"]
    env = dict(os.environ, MC_TCP_BIND_ADDRESS="127.0.0.1")
    procs = []
    log = open(args.log, "w")

    def stop_all():
        for pr in reversed(procs):
            if pr.poll() is None:
                pr.send_signal(signal.SIGTERM)
                try:
                    pr.wait(10)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    pr.wait()

    try:
        procs.append(subprocess.Popen(master_cmd, stdout=log, stderr=log, env=env))
        if not wait_http(f"{args.metadata}?key=probe", 30):
            raise RuntimeError("mooncake_master's metadata server did not answer")
        common = [sys.executable, __file__, "--metadata", args.metadata, "--master-addr",
                  args.master_addr, "--sizes", args.sizes, "--batches", args.batches,
                  "--reps", str(args.reps), "--count", str(args.count)]
        holder = subprocess.Popen(common + ["--role", "holder"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        procs.append(holder)
        line = holder.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("the holder did not get ready; see " + log.name)
        reader = subprocess.run(common + ["--role", "reader"], stdout=subprocess.PIPE,
                                stderr=log, env=env, text=True, timeout=args.timeout)
        sys.stdout.write("".join(l + "\n" for l in reader.stdout.splitlines()
                                 if not l.startswith("{")))
        if reader.returncode != 0:
            raise RuntimeError(f"the reader failed ({reader.returncode}); see {log.name}")
        results = json.loads(reader.stdout.strip().splitlines()[-1])["results"]
        holder.stdin.close()
    finally:
        stop_all()
    import importlib.metadata as md
    version = md.version("mooncake-transfer-engine-non-cuda")
    for r in results:
        r.update({"tool": "mooncake_store", "protocol": "tcp",
                  "package": f"mooncake-transfer-engine-non-cuda=={version}",
                  "master_command": " ".join(master_cmd), "loadavg_1m": os.getloadavg()[0]})
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
