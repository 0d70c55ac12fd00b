#!/usr/bin/env python3
"""Plots of the blending evaluation (docs/blend.md) from blend_eval's and eviction_sim's JSON.

usage: plot_blend.py blend.json blend_progress.jsonl blend_eviction.json out_dir
                     [more.json more_progress.jsonl ...]

Further (summary, progress) pairs from runs over the same prompts (same --seed and pool, e.g.
`BLEND_NAME=blend_craft_nc scripts/bench_blend.sh 100 --methods ...`) add their methods to the
quality and deviation plots; a method already present is kept from the first file.

Writes out_dir/blend_quality_vs_ttft.png, blend_kv_deviation.png, blend_eviction.png.
Needs matplotlib (python3-matplotlib on Debian).
"""
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "full": "black", "prefix": "gray", "naive": "tab:red", "random": "tab:orange",
    "cb": "tab:blue", "craft": "tab:green",
}


def color(name):
    if name.startswith("craft") and ":nc" in name:
        return "darkgreen"  # Cache-Craft counting the new context
    return COLORS.get(name.split(":")[0], "tab:purple")


def main():
    blend_path, progress_path, eviction_path, out_dir = sys.argv[1:5]
    with open(blend_path) as f:
        blend = json.load(f)
    methods = blend["methods"]

    def read_records(path):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    records = read_records(progress_path)
    by_index = {rec["index"]: rec for rec in records}
    extra = sys.argv[5:]
    for summary_path, more_progress in zip(extra[0::2], extra[1::2]):
        with open(summary_path) as f:
            for name, s in json.load(f)["methods"].items():
                methods.setdefault(name, s)
        for rec in read_records(more_progress):
            base = by_index.get(rec["index"])
            if base is None:
                continue
            scale = base["full_ttft_s"] / rec["full_ttft_s"]  # per-prompt ratios stay ratios
            for name, r in rec["methods"].items():
                if name not in base["methods"]:
                    r = dict(r, ttft_s=r["ttft_s"] * scale)
                    base["methods"][name] = r

    # Quality against TTFT: per-method medians of the TTFT ratio; mean KL and agreement. Faint
    # dots: single prompts.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for name in methods:
        if name in ("full", "prefix"):
            continue
        xs, ys = [], []
        for rec in records:
            r = rec["methods"].get(name)
            if r is None:
                continue
            xs.append(r["ttft_s"] / rec["full_ttft_s"])
            ys.append(max(r["kl_cont"], 1e-5))
        axes[0].scatter(xs, ys, color=color(name), s=6, alpha=0.15, zorder=1)
    for name, s in methods.items():
        x = s["ttft_ratio_median"]
        for ax, key in ((axes[0], "kl_continuation_mean"), (axes[1], "forced_match_mean")):
            y = s[key]
            if key.startswith("kl") and y <= 0:
                y = 1e-5  # exact methods, drawn at the bottom of the log axis
            marker = "s" if name in ("full", "prefix") else "o"
            ax.scatter([x], [y], color=color(name), marker=marker, s=45, zorder=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("KL(full || method), mean over the 32 continuation steps (nats)")
    axes[1].set_ylabel("share of the 32 greedy tokens predicted alike (teacher-forced)")
    for ax in axes:
        ax.set_xlabel("TTFT / full prefill TTFT (median over prompts)")
        ax.grid(True, alpha=0.3)
    fig.suptitle("SmolLM2-135M, %d RAG prompts through cachesvc: quality vs time to first token"
                 % blend["prompts"])
    fig.tight_layout()
    fig.savefig(f"{out_dir}/blend_quality_vs_ttft.png", dpi=110)
    plt.close(fig)

    # KV deviation per layer.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, s in methods.items():
        if name in ("full", "prefix"):
            continue
        dev = s["kv_dev_per_layer"]
        ax.plot(range(len(dev)), dev, label=name, color=color(name),
                linestyle="--" if ":br" in name or ":k" in name else "-",
                alpha=0.6 if name.startswith("craft:0.25") else 1.0)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean |KV - KV_full| (K and V, all positions)")
    ax.set_title("KV deviation from a full prefill, per layer")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/blend_kv_deviation.png", dpi=110)
    plt.close(fig)

    # Eviction: saved FLOPs vs capacity, mean over seeds, one panel per Zipf exponent.
    with open(eviction_path) as f:
        ev = json.load(f)
    zipfs = sorted({r["zipf_s"] for r in ev["rows"]})
    fig, axes = plt.subplots(1, len(zipfs), figsize=(4 * len(zipfs), 3.8), sharey=True)
    for ax, z in zip(axes, zipfs):
        rows = [r for r in ev["rows"] if r["zipf_s"] == z]
        caps = sorted({r["capacity_fraction"] for r in rows})
        for key, label, c in (("lru_saved_fraction", "LRU", "tab:red"),
                              ("cost_saved_fraction", "cost-aware", "tab:green")):
            ys = [statistics.mean(r[key] for r in rows if r["capacity_fraction"] == cap)
                  for cap in caps]
            ax.plot([100 * c_ for c_ in caps], [100 * y for y in ys], marker="o", label=label,
                    color=c)
        ax.set_xscale("log")
        ax.set_title(f"Zipf s = {z}")
        ax.set_xlabel("capacity (% of catalog bytes)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("prefill FLOPs saved (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(f"{out_dir}/blend_eviction.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
