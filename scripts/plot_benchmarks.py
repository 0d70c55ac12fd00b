#!/usr/bin/env python3
"""Plots of docs/benchmarks.md from the JSON results in bench/results/.

usage: plot_benchmarks.py [results_dir] [out_dir]     (defaults: bench/results docs/img)

Draws one PNG per benchmark whose result file exists (missing ones are skipped with a note):
  bench_service_paths.png   throughput per data path and object size (service_paths.json)
  bench_ssd_tier.png        SSD tier vs fio, read and write (ssd_tier.json)
  bench_connector_ttft.png  TTFT without cache vs CPU-tier and SSD hits (connector.json)
Needs matplotlib (python3-matplotlib on Debian, installed by scripts/install_deps.sh).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(results_dir, name):
    path = os.path.join(results_dir, name)
    if not os.path.exists(path):
        print(f"plot_benchmarks: {path} missing, skipped")
        return None
    with open(path) as f:
        return json.load(f)


def size_label(num_bytes):
    if num_bytes >= 1 << 20:
        return f"{num_bytes >> 20} MiB"
    return f"{num_bytes >> 10} KiB"


def grouped_bars(ax, groups, series, values, ylabel, title):
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values[name], width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_service(data, out_dir):
    sizes = data["sizes"]
    groups = [size_label(s["bytes"]) for s in sizes]
    order = ["shm", "shm_grpcctl", "shm_pipe", "shm_pipe_grpcctl", "grpc", "memcpy", "redis"]
    paths = [p for p in order if p in sizes[0]["paths"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, op in zip(axes, ["put", "get"]):
        values = {p: [s["paths"][p][op]["gbps"] for s in sizes] for p in paths}
        grouped_bars(ax, groups, paths, values, "GB/s (median of reps)", f"{op}")
    fig.suptitle("cachesvc data paths vs memcpy and Redis (service_paths_bench)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "bench_service_paths.png"), dpi=110)
    plt.close(fig)


def plot_ssd(data, out_dir):
    sizes = data["sizes"]
    groups = [s["object_size"] for s in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, op in zip(axes, ["write", "read"]):
        values = {
            "KVStash SSD tier": [s[f"ours_{op}_MBps"] for s in sizes],
            "fio O_DIRECT": [s[f"fio_{op}_MBps"] for s in sizes],
        }
        grouped_bars(ax, groups, list(values), values, "MB/s (median of reps)", op)
    fig.suptitle("SSD tier vs fio, same directory, same run (ssd_tier_bench)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "bench_ssd_tier.png"), dpi=110)
    plt.close(fig)


def plot_connector(data, out_dir):
    rows = data["results"]
    groups = [str(r["prompt_tokens"]) for r in rows]
    values = {
        "no cache": [r["no_cache"]["ttft_ms"] for r in rows],
        "CPU-tier hit": [r["cpu_hit"]["ttft_ms"] for r in rows],
        "SSD hit": [r["ssd_hit"]["ttft_ms"] for r in rows],
    }
    fig, ax = plt.subplots(figsize=(7, 4))
    grouped_bars(ax, groups, list(values), values, "TTFT, ms (log scale)",
                 "SmolLM2-135M TTFT by prompt tokens (connector_bench)")
    ax.set_yscale("log")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['speedup_cpu_hit']:.0f}x", (i, r["cpu_hit"]["ttft_ms"]),
                    ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "bench_connector_ttft.png"), dpi=110)
    plt.close(fig)


def main():
    results_dir = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
    out_dir = sys.argv[2] if len(sys.argv) > 2 else "docs/img"
    os.makedirs(out_dir, exist_ok=True)
    for name, plot in [("service_paths.json", plot_service), ("ssd_tier.json", plot_ssd),
                       ("connector.json", plot_connector)]:
        data = load(results_dir, name)
        if data is not None:
            plot(data, out_dir)
            print(f"plot_benchmarks: {name} -> {out_dir}")


if __name__ == "__main__":
    main()
