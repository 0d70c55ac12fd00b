#!/usr/bin/env python3
"""Independent reference forward pass of a GGUF llama model (SmolLM2-135M-Instruct) in numpy.

Written from the model definition, not from the C++ engine: weights are dequantised with the
PyPI gguf package's own `gguf.quants.dequantize`, activations are float32, attention is the
textbook causal softmax(QK^T / sqrt(d)) V with grouped KV heads, RoPE rotates adjacent pairs
(dims 2i, 2i+1) as GGUF llama tensors expect (the converter permuted Q/K rows for it).

Writes the logits of every position as little-endian float32 [n_tokens][vocab] to --out, and
with --out-kv-f16 a second set computed with K (after RoPE) and V rounded to float16 before
attention, which is how the engine stores them in its paged KV memory by default.

Run: ~/.cache/kvstash/venv/bin/python tests/reference/smollm2_reference.py \
       --model ~/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf \
       --tokens 1,9690,198 --out /tmp/logits.f32 [--out-kv-f16 /tmp/logits_kvf16.f32]
"""
import argparse

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key):
    return reader.fields[key].contents()


def load_all(reader):
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF dims are innermost first: a [cols, rows] tensor is a rows x cols matrix.
        weights[t.name] = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim > 1 else w
    return weights


def rms_norm(x, w, eps):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)).astype(np.float32) * w


def rope(x, positions, theta):
    # x: [n, heads, d]; rotate pairs (2i, 2i+1) by positions * theta^(-2i/d).
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    angle = positions[:, None].astype(np.float64) * inv_freq[None, :]
    cos = np.cos(angle).astype(np.float32)[:, None, :]
    sin = np.sin(angle).astype(np.float32)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(reader, weights, tokens, kv_f16):
    arch = field(reader, "general.architecture")
    assert arch == "llama", arch
    n_layers = int(field(reader, "llama.block_count"))
    n_heads = int(field(reader, "llama.attention.head_count"))
    n_kv = int(field(reader, "llama.attention.head_count_kv"))
    dim = int(field(reader, "llama.embedding_length"))
    eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    theta = float(field(reader, "llama.rope.freq_base"))
    hd = dim // n_heads
    n = len(tokens)
    positions = np.arange(n)

    load = weights.__getitem__
    emb = load("token_embd.weight")
    x = emb[np.array(tokens)].astype(np.float32)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
    for l in range(n_layers):
        p = f"blk.{l}."
        xn = rms_norm(x, load(p + "attn_norm.weight"), eps)
        q = (xn @ load(p + "attn_q.weight").T).reshape(n, n_heads, hd)
        k = (xn @ load(p + "attn_k.weight").T).reshape(n, n_kv, hd)
        v = (xn @ load(p + "attn_v.weight").T).reshape(n, n_kv, hd)
        q, k = rope(q, positions, theta), rope(k, positions, theta)
        if kv_f16:
            k = k.astype(np.float16).astype(np.float32)
            v = v.astype(np.float16).astype(np.float32)
        group = n_heads // n_kv
        out = np.empty((n, n_heads, hd), dtype=np.float32)
        for h in range(n_heads):
            kh, vh = k[:, h // group, :], v[:, h // group, :]
            scores = (q[:, h, :] @ kh.T) / np.float32(np.sqrt(hd)) + mask
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            out[:, h, :] = probs @ vh
        x = x + out.reshape(n, dim) @ load(p + "attn_output.weight").T
        xn = rms_norm(x, load(p + "ffn_norm.weight"), eps)
        gate = xn @ load(p + "ffn_gate.weight").T
        up = xn @ load(p + "ffn_up.weight").T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ load(p + "ffn_down.weight").T
    xn = rms_norm(x, load("output_norm.weight"), eps)
    head = weights.get("output.weight", emb)
    return (xn @ head.T).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True)
    ap.add_argument("--out-kv-f16")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    reader = GGUFReader(args.model)
    weights = load_all(reader)
    forward(reader, weights, tokens, False).astype("<f4").tofile(args.out)
    if args.out_kv_f16:
        forward(reader, weights, tokens, True).astype("<f4").tofile(args.out_kv_f16)


if __name__ == "__main__":
    main()
