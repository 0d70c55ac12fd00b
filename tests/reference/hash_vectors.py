#!/usr/bin/env python3
"""Independent statement of the KVStash hashing spec (docs/hashing.md), used to produce the
golden vectors in tests/common/key_test.cc. Needs the PyPI package `xxhash`.

Run: python3 tests/reference/hash_vectors.py
"""
import struct
import xxhash


def h128(data: bytes) -> bytes:
    # XXH3-128, seed 0; serialised as low64 LE then high64 LE.
    v = xxhash.xxh3_128_intdigest(data)
    return struct.pack("<QQ", v & (2**64 - 1), v >> 64)


def tokens_le(tokens):
    return b"".join(struct.pack("<I", t) for t in tokens)


def chain(parent: bytes, tokens) -> bytes:
    return h128(b"KVS1PFX\0" + parent + tokens_le(tokens))


def independent(tokens) -> bytes:
    return h128(b"KVS1IND\0" + tokens_le(tokens))


def variant(chunk: bytes, slot: int, part: int) -> bytes:
    return h128(b"KVS1VAR\0" + chunk + struct.pack("<II", slot, part))


def lp_str(s: bytes) -> bytes:
    return struct.pack("<I", len(s)) + s


def model_fp(model_id, revision, dtype, num_layers, layer_begin, layer_end, total_kv_heads,
             head_begin, head_end, head_dim, rope, rope_theta) -> bytes:
    b = b"KVS1MDL\0" + lp_str(model_id) + lp_str(revision)
    b += struct.pack("<10I", dtype, num_layers, layer_begin, layer_end, total_kv_heads,
                     head_begin, head_end, head_dim, rope,
                     struct.unpack("<I", struct.pack("<f", rope_theta))[0])
    return h128(b)


def object_key(ns: bytes, fp: bytes, th: bytes) -> bytes:
    return h128(b"KVS1KEY\0" + lp_str(ns) + fp + th)


if __name__ == "__main__":
    zero = bytes(16)
    print("chain(0, [])            ", chain(zero, []).hex())
    print("chain(0, [1,2,3])       ", chain(zero, [1, 2, 3]).hex())
    c0 = chain(zero, list(range(256)))
    c1 = chain(c0, list(range(256, 512)))
    print("chain 0..255            ", c0.hex())
    print("chain 256..511 after c0 ", c1.hex())
    print("independent([1,2,3])    ", independent([1, 2, 3]).hex())
    print("independent([0xFFFFFFFF])", independent([0xFFFFFFFF]).hex())
    print("variant(ind([1,2,3]),0,0)", variant(independent([1, 2, 3]), 0, 0).hex())
    print("variant(ind([1,2,3]),4,1)", variant(independent([1, 2, 3]), 4, 1).hex())
    fp = model_fp(b"HuggingFaceTB/SmolLM2-135M-Instruct", b"b179c952", 1, 30, 0, 30, 3, 0, 3, 64, 1,
                  100000.0)
    print("fingerprint smollm2     ", fp.hex())
    print("object_key(tenant-a)    ", object_key(b"tenant-a", fp, c0).hex())
    print("object_key('')          ", object_key(b"", fp, c0).hex())
