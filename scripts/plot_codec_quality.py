#!/usr/bin/env python3
"""Plots bench/results/codec_quality.json: size against next-token agreement and KL per model.

Usage: python3 scripts/plot_codec_quality.py bench/results/codec_quality.json docs/img
Needs matplotlib (Debian python3-matplotlib, installed by scripts/install_deps.sh).
Writes docs/img/codec_quality_<model>.png.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label_of(name):
    return (name.replace("cachegen_", "").replace("profile_", "").replace("_", " "))


def plot_model(label, section, out_dir):
    summary = section["summary"]
    chunk = "256" if "256" in summary["sizes"] else sorted(summary["sizes"])[0]
    sizes = summary["sizes"][chunk]["configs"]
    quality = summary["quality"]
    int8 = sizes["int8"]["bytes_per_token"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    groups = [
        ("8-bit quantisation", ["int8"], "black", "s"),
        ("CacheGen levels 1-3, model profile",
         ["cachegen_profile_l1", "cachegen_profile_l2", "cachegen_profile_l3"], "tab:blue", "o"),
        ("CacheGen levels 1-3, per-chunk CDF (reference)",
         ["cachegen_l1", "cachegen_l2", "cachegen_l3"], "tab:gray", "o"),
        ("explicit bins (K/V), model profile",
         sorted(n for n in sizes if n.startswith("cachegen_profile_k")), "tab:orange", "^"),
        ("delta-to-anchor L2 (profile / reference)",
         ["cachegen_delta_profile_l2", "cachegen_delta_l2"], "tab:green", "D"),
    ]
    for ax, metric, ylabel in [
        (axes[0], "next_token_agreement", "next-token agreement (64 greedy tokens)"),
        (axes[1], "kl_mean", "KL(exact || compressed), nats, mean"),
    ]:
        for title, names, color, marker in groups:
            xs, ys = [], []
            for n in names:
                q = quality.get(f"{n}@{chunk}", quality.get(n))
                if n not in sizes or q is None:
                    continue
                xs.append(sizes[n]["bytes_per_token"])
                ys.append(max(q[metric], 1e-6) if metric == "kl_mean" else q[metric])
                ax.annotate(label_of(n), (xs[-1], ys[-1]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            if xs:
                ax.plot(xs, ys, marker=marker, color=color, label=title,
                        linestyle="-" if len(xs) > 1 and "levels" in title else "none")
        ax.axvline(int8 / 3.5, color="red", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"bytes per token ({chunk}-token chunks, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if metric == "kl_mean":
            ax.set_yscale("log")
        else:
            ax.axhline(0.98, color="red", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=7, loc="lower right")
    prompts = section["prompts"]
    fig.suptitle(
        f"{label}: CacheGen on real KV ({prompts['test']} prompts of {prompts['context_tokens']}"
        f" cached tokens, f16 KV); red: goal (3.5x smaller than 8-bit, 98% agreement)",
        fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, f"codec_quality_{label.lower().replace('-', '_')}.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    results, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    with open(results) as f:
        models = json.load(f)["models"]
    for label, section in models.items():
        if "summary" in section:
            plot_model(label, section, out_dir)


if __name__ == "__main__":
    main()
