#!/usr/bin/env python3
"""Independent statement of CacheGen from the spec text (algorithms.md §1.2, docs/codec.md).

Written from the specification only, deliberately literal and slow: the range coder runs the
reference renormalisation loop bit by bit (the C++ coder executes it in bulk), the decoder uses
the reference binary search and integer division. It also writes the KVCG container and KVCP
profile formats from docs/codec.md, with its own crc32c.

Usage (with the project venv, see scripts/setup_python.sh):
  ~/.cache/kvstash/venv/bin/python tests/reference/cachegen_reference.py --self-test
  ~/.cache/kvstash/venv/bin/python tests/reference/cachegen_reference.py \
      --write-golden tests/codec/golden_vectors.inc
The C++ test tests/codec/golden_test.cc compares the codec with the generated vectors; rerun the
second command (and commit the result) only when the specified semantics change on purpose.
"""

import argparse
import math
import struct
import sys

import numpy as np

M32 = 0xFFFFFFFF
HALF = 1 << 31
QUARTER = 1 << 30
MIN_SCALE = np.float32(2.0**-100)

# ---------------------------------------------------------------- quantisation (§1.2 items 3-4)


def quant_cq(bins):
    return bins // 2 - 1


def quantize_vector(x, bins):
    """x: float32 vector. Returns (symbols, stored scale) per the vectorised reference."""
    x = np.asarray(x, dtype=np.float32)
    cq = quant_cq(bins)
    m = np.float32(np.max(np.abs(x))) if x.size else np.float32(0)
    if m < MIN_SCALE:
        return np.full(x.shape, cq, dtype=np.int64), np.float32(0)
    factor = np.float32(np.float32(cq) / m)  # f32 division
    y = (x * factor).astype(np.float32)  # f32 product, rounded
    y = (y + np.float32(cq)).astype(np.float32)  # f32 sum, rounded (no FMA)
    sym = np.rint(y).astype(np.int64)  # round half to even
    return np.clip(sym, 0, 2 * cq), m


def dequantize(sym, bins, scale):
    cq = np.float32(quant_cq(bins))
    t = (np.asarray(sym, dtype=np.float32) - cq).astype(np.float32)
    t = (t / cq).astype(np.float32)
    return (t * np.float32(scale)).astype(np.float32)


# ---------------------------------------------------------------- CDF (§1.2 item 5)


def build_cdf(symbols, mb, pseudo_top=None):
    """cdf[i] = floor((65535 - mb) * cum[i] / n) + i over symbols < mb."""
    hist = [0] * (mb + 1)
    for s in symbols:
        if s < mb:
            hist[s] += 1
    n = sum(hist)
    cdf = []
    cum = 0
    for i in range(mb + 1):
        if n == 0:
            cdf.append(65535 if i == mb else i)
        else:
            cdf.append((65535 - mb) * cum // n + i)
        cum += hist[i]
    return cdf


# ---------------------------------------------------------------- range coder (§1.2 items 7-8)


def encode_stream(symbols, cdf):
    lp = len(cdf)
    low, high, pending = 0, M32, 0
    bits = []

    def emit(bit):
        nonlocal pending
        bits.append(bit)
        bits.extend([1 - bit] * pending)
        pending = 0

    for s in symbols:
        assert 0 <= s <= lp - 2
        span = high - low + 1
        c_lo = cdf[s]
        c_hi = 65536 if s == lp - 2 else cdf[s + 1]
        high = (low - 1 + ((span * c_hi) >> 16)) & M32
        low = (low + ((span * c_lo) >> 16)) & M32
        while True:
            if high < HALF:
                emit(0)
                low = (low << 1) & M32
                high = ((high << 1) | 1) & M32
            elif low >= HALF:
                emit(1)
                low = (low << 1) & M32
                high = ((high << 1) | 1) & M32
            elif low >= QUARTER and high < 3 * QUARTER:
                pending += 1
                low = (low << 1) & 0x7FFFFFFF
                high = ((high << 1) | 0x80000001) & M32
            else:
                break
    pending += 1
    emit(0 if low < QUARTER else 1)
    while len(bits) % 8:
        bits.append(0)
    out = bytearray()
    for i in range(0, len(bits), 8):
        byte = 0
        for b in bits[i:i + 8]:
            byte = (byte << 1) | b
        out.append(byte)
    return bytes(out)


def decode_stream(data, cdf, n):
    lp = len(cdf)
    pos = [0]

    def bit():
        i = pos[0]
        pos[0] += 1
        byte = data[i // 8] if i // 8 < len(data) else 0
        return (byte >> (7 - i % 8)) & 1

    value = 0
    for _ in range(32):
        value = (value << 1) | bit()
    low, high = 0, M32
    out = []
    for _ in range(n):
        span = high - low + 1
        count = ((value - low + 1) * 65536 - 1) // span
        left, right = 0, lp - 1  # reference binsearch over [0, lp-2]
        while left + 1 < right:
            m = (left + right) // 2
            if cdf[m] < count:
                left = m
            elif cdf[m] > count:
                right = m
            else:
                left = m
                break
        s = left
        out.append(s)
        c_lo = cdf[s]
        c_hi = 65536 if s == lp - 2 else cdf[s + 1]
        high = (low - 1 + ((span * c_hi) >> 16)) & M32
        low = (low + ((span * c_lo) >> 16)) & M32
        while True:
            if low >= HALF or high < HALF:
                low = (low << 1) & M32
                high = ((high << 1) | 1) & M32
                value = ((value << 1) | bit()) & M32
            elif low >= QUARTER and high < 3 * QUARTER:
                low = (low << 1) & 0x7FFFFFFF
                high = ((high << 1) | 0x80000001) & M32
                value = (((value - QUARTER) << 1) | bit()) & M32
            else:
                break
    return out


# ---------------------------------------------------------------- levels (docs/codec.md §1)

K_BINS = {1: (16, 16, 12), 2: (32, 16, 16), 3: (32, 32, 32)}
V_BINS = {1: (16, 12), 2: (32, 16), 3: (32, 32)}


def row_bins(level, model_layers, layer_begin, num_layers):
    k1 = -(-5 * model_layers // 16)
    k2 = -(-5 * model_layers // 8)
    v1 = -(-model_layers // 16)
    k, v = [], []
    for layer in range(layer_begin, layer_begin + num_layers):
        group = 0 if layer < k1 else (1 if layer < k2 else 2)
        k.append(K_BINS[level][group])
        v.append(V_BINS[level][0 if layer < v1 else 1])
    return k + v


# ---------------------------------------------------------------- container (docs/codec.md §3)


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def f16_bits(values):
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint16)


def encode_chunk(kv, heads, bins, subchunk=256, mode=0, group=0, dtype_code=1, level=2):
    """kv: float16 array [L][2][T][C]. Returns (KVCG container bytes with inline CDFs, the KV the
    decoder must reconstruct as float16)."""
    L, _, T, C = kv.shape
    rows = 2 * L
    lp = max(bins) + 1
    mb = lp - 1
    anchors_per_row = -(-T // group) if mode == 1 else 0
    sym = np.zeros((rows, T, C), dtype=np.int64)
    scales = np.zeros((rows, T), dtype=np.float32)
    anchors = np.zeros((rows, anchors_per_row, C), dtype=np.int64)
    coded = [t for t in range(T) if not (mode == 1 and t % group == 0)]
    decoded = np.zeros(kv.shape, dtype=np.float16)
    for r in range(rows):
        layer, half = (r, 0) if r < L else (r - L, 1)
        x_row = kv[layer, half].astype(np.float32)
        if mode == 0:
            for t in range(T):
                sym[r, t], scales[r, t] = quantize_vector(x_row[t], bins[r])
                decoded[layer, half, t] = dequantize(sym[r, t], bins[r], scales[r, t])
        else:
            for g in range(anchors_per_row):
                t0 = g * group
                anchors[r, g], scales[r, t0] = quantize_vector(x_row[t0], 256)
                a_hat = dequantize(anchors[r, g], 256, scales[r, t0])
                sym[r, t0] = quant_cq(bins[r])
                decoded[layer, half, t0] = a_hat
                for t in range(t0 + 1, min(T, t0 + group)):
                    d = (x_row[t] - a_hat).astype(np.float32)
                    sym[r, t], scales[r, t] = quantize_vector(d, bins[r])
                    d_hat = dequantize(sym[r, t], bins[r], scales[r, t])
                    decoded[layer, half, t] = (a_hat + d_hat).astype(np.float32)
    cdf = [[build_cdf([int(sym[r, t, c]) for t in coded], mb) for c in range(C)]
           for r in range(rows)]
    lengths, payload = [], bytearray()
    for t0 in range(0, T, subchunk):
        sub_tokens = [t for t in coded if t0 <= t < t0 + subchunk]
        for r in range(rows):
            for c in range(C):
                stream = encode_stream([int(sym[r, t, c]) for t in sub_tokens], cdf[r][c])
                lengths.append(len(stream))
                payload += stream
    width = 2 if max(lengths) <= 0xFFFF else 4
    body = bytearray(bytes(bins))
    for r in range(rows):
        for c in range(C):
            body += struct.pack("<%dH" % lp, *cdf[r][c])
    if mode == 0:
        body += f16_bits(scales.reshape(-1)).tobytes()
    else:
        body += scales.reshape(-1).astype("<f4").tobytes()
        body += bytes(int(a) for a in anchors.reshape(-1))
    for n in lengths:
        body += struct.pack("<H" if width == 2 else "<I", n)
    body += payload
    header = bytearray(b"KVCG")
    header += struct.pack("<HHBBBBBBBB", 1, 72, mode, level, dtype_code,
                          dtype_code if mode == 0 else 3, 0, width, lp, 0)
    header += struct.pack("<IIIIII", L, heads, C // heads, T, subchunk, group)
    header += bytes(16)
    header += struct.pack("<Q", len(payload))
    header += struct.pack("<I", crc32c(body))
    header += struct.pack("<I", crc32c(header))
    assert len(header) == 72
    return bytes(header + body), decoded


# ---------------------------------------------------------------- golden vectors


def laplace_symbols(rng, n, bins, scale):
    cq = quant_cq(bins)
    v = np.rint(rng.laplace(0.0, scale, n)).astype(np.int64) + cq
    return [int(s) for s in np.clip(v, 0, 2 * cq)]


def stream_cases(rng):
    cases = []

    def add(name, symbols, lp, cdf=None):
        if cdf is None:
            cdf = build_cdf(symbols, lp - 1)
        data = encode_stream(symbols, cdf)
        assert decode_stream(data, cdf, len(symbols)) == symbols, name
        cases.append((name, cdf, symbols, data))

    for n in (1, 2, 255, 256):
        add("laplace_lp33_t%d" % n, laplace_symbols(rng, n, 32, 2.0), 33)
        add("laplace_lp17_t%d" % n, laplace_symbols(rng, n, 16, 1.2), 17)
    add("all_equal_t256", [15] * 256, 33)
    add("all_equal_t1", [7], 17)
    # Symbol lp-2 (the top, coded up to 65536) and unused symbols in between.
    top = [0, 31, 31, 5, 31, 0, 0, 31] * 16
    add("top_symbol_lp33", top, 33)
    add("top_symbol_lp17", [15, 0, 15, 15, 3] * 20, 17)
    # A foreign, skewed CDF (profile-like): rare symbols cost up to 16 bits, long E3 runs.
    skew = build_cdf([7] * 5000 + [8] * 3, 16)
    add("foreign_cdf_rare_symbols", [0, 15, 1, 14, 7, 8, 2, 13] * 32, 17, skew)
    add("laplace_lp33_t1000", laplace_symbols(rng, 1000, 32, 3.0), 33)
    add("uniform_lp65_t300", [int(s) for s in rng.integers(0, 64, 300)], 65)
    return cases


def quant_cases(rng):
    cases = []
    # Exact .5 ties: m = 15 makes the factor 1 for bins 32; m = 7 for bins 16.
    cases.append((32, [15.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -15.0, 0.0, 14.5]))
    cases.append((16, [7.0, 0.5, 1.5, -0.5, -1.5, -6.5, 6.5, 3.0]))
    cases.append((12, [0.0] * 8))  # all zero: scale 0, symbols Cq
    for bins in (12, 16, 32, 64):
        x = rng.laplace(0.0, 1.0, 64).astype(np.float16).astype(np.float32)
        cases.append((bins, list(x)))
    out = []
    for bins, x in cases:
        x16 = np.asarray(x, dtype=np.float32).astype(np.float16)
        sym, m = quantize_vector(x16.astype(np.float32), bins)
        out.append((bins, [int(v) for v in x16.view(np.uint16)], [int(s) for s in sym],
                    int(np.float32(m).astype(np.float16).view(np.uint16))))
    return out


def cdf_cases(rng):
    out = []
    for mb, symbols in ((16, [7]), (16, laplace_symbols(rng, 256, 16, 1.0)),
                        (32, laplace_symbols(rng, 1000, 32, 2.5)), (32, [0, 30] * 100),
                        (64, [int(s) for s in rng.integers(0, 63, 777)])):
        out.append((mb, symbols, build_cdf(symbols, mb)))
    return out


def chunk_case(rng, mode):
    # 24 channels: one 16-wide vector block and a tail of 8 in the C++ coders; 3 sub-chunks.
    L, H, D, T, S = 2, 3, 8, 40, 16
    C = H * D
    kv = np.zeros((L, 2, T, C), dtype=np.float16)
    for layer in range(L):
        for half in range(2):
            scale = rng.lognormal(0.0, 0.5, C)
            offset = rng.normal(0.0, 1.0, C) if half == 0 else np.zeros(C)
            state = rng.laplace(0.0, 1.0, C)
            for t in range(T):
                state = 0.8 * state + 0.6 * rng.laplace(0.0, 0.7, C)
                kv[layer, half, t] = (offset + scale * state).astype(np.float16)
    kv[1, 0, 5] = 0  # an all-zero vector (scale 0)
    bins = row_bins(2, L, 0, L)
    container, decoded = encode_chunk(kv, H, bins, S, mode, 10 if mode == 1 else 0)
    return (L, H, D, T, S, mode, [int(v) for v in kv.reshape(-1).view(np.uint16)], container,
            [int(v) for v in decoded.reshape(-1).view(np.uint16)])


def fmt_list(values, per_line=24):
    items = [str(v) for v in values]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "{" + (",\n     ".join(lines)) + "}"


def write_golden(path):
    rng = np.random.default_rng(20240915)
    out = ["// Generated by tests/reference/cachegen_reference.py --write-golden. Do not edit.",
           "// Independent statement of the CacheGen reference semantics (docs/codec.md).",
           "namespace golden {", ""]
    out.append("inline const std::vector<StreamCase> kStreamCases = {")
    for name, cdf, symbols, data in stream_cases(rng):
        out.append('    {"%s",\n     %s,\n     %s,\n     %s},' %
                   (name, fmt_list(cdf), fmt_list(symbols), fmt_list(list(data))))
    out.append("};\n")
    out.append("inline const std::vector<QuantCase> kQuantCases = {")
    for bins, x, sym, scale in quant_cases(rng):
        out.append("    {%d,\n     %s,\n     %s,\n     %d}," %
                   (bins, fmt_list(x), fmt_list(sym), scale))
    out.append("};\n")
    out.append("inline const std::vector<CdfCase> kCdfCases = {")
    for mb, symbols, cdf in cdf_cases(rng):
        out.append("    {%d,\n     %s,\n     %s}," % (mb, fmt_list(symbols), fmt_list(cdf)))
    out.append("};\n")
    out.append("inline const std::vector<ChunkCase> kChunkCases = {")
    for mode in (0, 1):
        L, H, D, T, S, m, kv, container, decoded = chunk_case(rng, mode)
        out.append("    {%d, %d, %d, %d, %d, %d,\n     %s,\n     %s,\n     %s}," %
                   (L, H, D, T, S, m, fmt_list(kv), fmt_list(list(container)), fmt_list(decoded)))
    out.append("};\n")
    out.append("}  // namespace golden")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def self_test():
    rng = np.random.default_rng(1)
    streams = 0
    for lp in (5, 17, 33, 65):
        for n in (1, 2, 7, 255, 256, 1000):
            symbols = [int(s) for s in rng.integers(0, lp - 1, n)]
            cdf = build_cdf(symbols, lp - 1)
            data = encode_stream(symbols, cdf)
            assert decode_stream(data, cdf, n) == symbols
            streams += 1
    assert row_bins(1, 32, 0, 32) == [16] * 20 + [12] * 12 + [16] * 2 + [12] * 30
    assert row_bins(2, 32, 0, 32) == [32] * 10 + [16] * 22 + [32] * 2 + [16] * 30
    assert crc32c(b"123456789") == 0xE3069283
    print("self-test ok: %d streams round-tripped" % streams)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--write-golden", metavar="PATH")
    args = parser.parse_args()
    if args.self_test:
        self_test()
    if args.write_golden:
        write_golden(args.write_golden)
    if not (args.self_test or args.write_golden):
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
