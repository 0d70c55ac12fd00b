#!/usr/bin/env python3
"""Entropy of KVQ-style symbols of dumped real KV (codec_quality --dump-dir) under different
entropy models, per 256-token chunk: what context modelling or token-to-token prediction could
save before any of it is built. Table costs are not counted (they favour finer contexts).

  python3 bench/codec/kvq_symbol_stats.py [--layers 30 --channels 192 --head-dim 64] DUMP.kvo...

f16 payloads (codec_quality dumps f16 contexts); the shape is given on the command line.
"""
import argparse
import numpy as np

HDR = 64

def load(path, L, C):
    raw = open(path, 'rb').read()
    # The payload follows the 64-byte object header (common/object_header.h).
    pay = np.frombuffer(raw[HDR:], dtype=np.float16).astype(np.float32)
    T = pay.size // (2 * L * C)
    return pay.reshape(L, 2, T, C), T

def quant_channel(x, bits, g=64):  # x [T, C]: per (channel, group) min/step
    T, C = x.shape
    q = np.empty_like(x, dtype=np.int32)
    top = 2**bits - 1
    for t0 in range(0, T, g):
        blk = x[t0:t0 + g]
        mn, mx = blk.min(0), blk.max(0)
        st = (mx - mn) / top
        inv = np.where(st > 0, 1 / np.where(st > 0, st, 1), 0)
        q[t0:t0 + g] = np.clip(np.floor((blk - mn) * inv + 0.5), 0, top)
    return q

def quant_token(x, bits):
    mn, mx = x.min(1, keepdims=True), x.max(1, keepdims=True)
    top = 2**bits - 1
    st = (mx - mn) / top
    inv = np.where(st > 0, 1 / np.where(st > 0, st, 1), 0)
    return np.clip(np.floor((x - mn) * inv + 0.5), 0, top).astype(np.int32)

def entropy(sym, ctx, nsym):
    """Sum over contexts of n * H(symbols in context), bits."""
    total = 0.0
    for c in np.unique(ctx):
        s = sym[ctx == c]
        p = np.bincount(s, minlength=nsym) / s.size
        p = p[p > 0]
        total += -s.size * (p * np.log2(p)).sum()
    return total

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--layers', type=int, default=30)
    ap.add_argument('--channels', type=int, default=192)
    ap.add_argument('--head-dim', type=int, default=64)
    ap.add_argument('--bits', type=int, default=4)
    ap.add_argument('dumps', nargs='+')
    a = ap.parse_args()
    bits = a.bits
    rows = {'K': [], 'V': []}
    for path in a.dumps:
        kv, T = load(path, a.layers, a.channels)
        for l in range(kv.shape[0]):
            for kind, x in (('K', kv[l, 0]), ('V', kv[l, 1])):
                for t0 in range(0, T - 255, 256):
                    xc = x[t0:t0 + 256]
                    q = quant_channel(xc, bits) if kind == 'K' else quant_token(xc, bits)
                    Tn, C = q.shape
                    head = np.broadcast_to(np.arange(C) // a.head_dim, q.shape)
                    chan = np.broadcast_to(np.arange(C), q.shape)
                    d = (q[1:] - q[:-1]) % (2**bits)
                    n = q.size
                    r = {
                        'coded (per-head tables)': entropy(q.ravel(), head.ravel(), 2**bits) / n,
                        'per-channel tables': entropy(q.ravel(), chan.ravel(), 2**bits) / n,
                        'delta to previous token, per-head': entropy(d.ravel(), head[1:].ravel(), 2**bits) / d.size,
                        'delta to previous token, per-channel': entropy(d.ravel(), chan[1:].ravel(), 2**bits) / d.size,
                        'conditioned on previous token symbol, per-head': entropy(
                            q[1:].ravel(), (head[1:] * 2**bits + q[:-1]).ravel(), 2**bits) / d.size,
                    }
                    rows[kind].append(r)
    for kind in ('K', 'V'):
        print(f'{kind} rows ({len(rows[kind])} row-chunks), {bits}-bit symbols, bits/symbol:')
        for key in rows[kind][0]:
            print(f'  {key:50s} {np.mean([r[key] for r in rows[kind]]):.3f}')

main()
