#!/usr/bin/env python3
"""Plot of transfer_bench results (docs/benchmarks-service.md, "Encoded transfers").

usage: plot_transfer.py out.png transfer_<rate>.json ...

One group of bars per link: the p50 time to get one KV chunk, raw and CacheGen levels 1-3.
Needs matplotlib (python3-matplotlib on Debian).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = [("raw", "raw", "black"), ("cachegen_l1", "CacheGen L1", "tab:green"),
         ("cachegen_l2", "CacheGen L2", "tab:blue"), ("cachegen_l3", "CacheGen L3", "tab:purple")]


def rate_bits(label):
    for suffix, mult in (("gbit", 1e9), ("mbit", 1e6)):
        if label.endswith(suffix):
            return float(label[: -len(suffix)]) * mult
    return float("inf")  # "none": unshaped loopback


def main():
    out, files = sys.argv[1], sys.argv[2:]
    runs = sorted((json.load(open(f)) for f in files), key=lambda r: rate_bits(r["label"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.2
    for k, (mode, name, color) in enumerate(MODES):
        xs = [i + (k - 1.5) * width for i in range(len(runs))]
        ys = [r["modes"][mode]["chunk_ms_p50"] for r in runs]
        ax.bar(xs, ys, width, label=name, color=color)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([r["label"] if r["label"] != "none" else "loopback" for r in runs])
    ax.set_yscale("log")
    ax.set_ylabel("ms per 5.9 MB KV chunk (p50, log)")
    ax.set_title("Streaming Get of one SmolLM2 KV chunk: raw vs encoded transfer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
