"""kvstash Python package against a real cachesvc: keys, round trips, zero copy, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import kvstash
from kvstash import errors

_counter = itertools.count(1)
FP = kvstash.ModelSpec(model_id="py-test", num_layers=2, total_kv_heads=2, head_dim=16).fingerprint()
LAYOUT = kvstash.KvLayout(num_layers=2, total_kv_heads=2, head_dim=16, num_tokens=32)  # 8 KiB


def fresh_names(n: int, ns: str = "py"):
    base = next(_counter) * 1000
    return [
        kvstash.ObjectName(ns, FP, kvstash.independent_token_hash([base + i])) for i in range(n)
    ]


def payloads(n: int, layout=LAYOUT, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, layout.raw_bytes(), dtype=np.uint8) for _ in range(n)]


# ---- keys: the same scheme as the C++ code (docs/hashing.md golden vectors) ----


def test_token_hash_golden_vectors():
    assert kvstash.chain_token_hash(None, []).hex() == "3cd4be28fd341c6e791c5f6606b70473"
    assert kvstash.chain_token_hash(bytes(16), [1, 2, 3]).hex() == "9f4d6340eb4f32eb11077db1cd530a6f"
    c0 = kvstash.chain_token_hash(None, np.arange(256, dtype=np.uint32))
    assert c0.hex() == "4c067250bdce8e5a1f8404c424e2386e"
    assert kvstash.chain_token_hash(c0, range(256, 512)).hex() == "40430788ba81843136975b3f79dfb8b9"
    ind = kvstash.independent_token_hash([1, 2, 3])
    assert ind.hex() == "8e6354780f2adbb8ef178c81183a07d4"
    assert kvstash.independent_token_hash([0xFFFFFFFF]).hex() == "5464fda953c6f866088be221cee7d9e0"
    assert kvstash.chunk_variant_hash(ind, 4, 1).hex() == "2a011f627b6bf3d45367a8245fa585c4"
    assert kvstash.chunk_token_hashes(range(512), 256) == [
        c0,
        kvstash.chain_token_hash(c0, range(256, 512)),
    ]


def test_fingerprint_and_object_key_golden_vectors():
    spec = kvstash.ModelSpec(
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        weights_revision="b179c952",
        dtype=kvstash.DType.F16,
        num_layers=30,
        total_kv_heads=3,
        head_dim=64,
        rope=kvstash.RopeConvention.NEOX,
        rope_theta=100000.0,
    )
    fp = spec.fingerprint()
    assert fp.hex() == "b6518bfc6fef993de0ec47499f35014b"
    c0 = kvstash.chain_token_hash(None, range(256))
    assert kvstash.object_key("tenant-a", fp, c0).hex() == "f51b5a1255b6a35850603ba0df39f592"
    name = kvstash.ObjectName("", fp.hex(), c0)  # hex strings are accepted too
    assert name.storage_key.hex() == "e15021d1aae6c0a91c9055abf7148451"
    names = kvstash.names_for_tokens("tenant-a", spec, np.arange(600, dtype=np.uint32))
    assert len(names) == 2 and names[0].storage_key.hex() == "f51b5a1255b6a35850603ba0df39f592"


def test_bad_hash_and_namespace_are_invalid_argument():
    with pytest.raises(errors.InvalidArgument) as e:
        kvstash.ObjectName("ns", b"short", bytes(16))
    assert e.value.code == 3 and e.value.code_name == "INVALID_ARGUMENT"
    with pytest.raises(errors.InvalidArgument):
        kvstash.ObjectName("x" * 257, bytes(16), bytes(16))


# ---- data: shared-memory path ----


def test_put_many_get_many_round_trip_byte_for_byte(client):
    names = fresh_names(24)
    data = payloads(24)
    assert client.put_many(names, LAYOUT, data) == [None] * 24
    out = [np.zeros(LAYOUT.raw_bytes(), dtype=np.uint8) for _ in names]
    addresses = [o.ctypes.data for o in out]
    results = client.get_many(names, out)
    assert all(r.ok for r in results), [r.error for r in results]
    for d, o, r, addr in zip(data, out, results, addresses):
        assert np.array_equal(d, o)
        assert o.ctypes.data == addr  # filled in place, not replaced
        assert r.info.payload_bytes == LAYOUT.raw_bytes()
        assert r.served_from == kvstash.Tier.CPU
    # bytearray and memoryview destinations, other dtypes of source arrays
    as_f16 = data[0].view(np.float16).reshape(2, 2, 32, 2, 16)
    n2 = fresh_names(1)
    client.put(n2[0], LAYOUT, as_f16, overwrite=True)
    dst = bytearray(LAYOUT.raw_bytes())
    assert client.get_many(n2, [memoryview(dst)])[0].ok
    assert bytes(dst) == data[0].tobytes()
    assert bytes(client.get(n2[0])) == data[0].tobytes()


def test_lookup_reports_presence_and_longest_prefix(client):
    names = fresh_names(5)
    data = payloads(5)
    # store 0, 1 and 3: the longest present prefix is 2
    assert client.put_many([names[i] for i in (0, 1, 3)], LAYOUT, [data[i] for i in (0, 1, 3)]) == [None] * 3
    reply = client.lookup(names)
    assert [bool(p) for p in reply.results] == [True, True, False, True, False]
    assert reply.longest_prefix == 2
    assert reply.results[0].tier == kvstash.Tier.CPU
    assert reply.results[0].payload_bytes == LAYOUT.raw_bytes()


def _arena_ranges():
    """Address ranges of this process's memfd mappings (the attached arena)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "memfd:" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def test_lease_is_a_zero_copy_view_of_the_arena(client):
    names = fresh_names(2)
    data = payloads(2, seed=3)
    assert client.put_many(names, LAYOUT, data) == [None, None]
    leases = client.acquire_many(names)
    try:
        for lease, d in zip(leases, data):
            view = np.frombuffer(lease, dtype=np.uint8)
            assert np.array_equal(view, d)
            addr = view.ctypes.data
            assert any(lo <= addr and addr + len(view) <= hi for lo, hi in _arena_ranges()), (
                "lease bytes are not in the arena mapping"
            )
            assert not view.flags.writeable
    finally:
        for lease in leases:
            lease.release()
    assert leases[0].released
    assert len(memoryview(leases[0])) == 0  # a released lease exports no bytes
    with pytest.raises(ValueError):
        leases[0].info


def test_reservation_writes_in_place_then_commit(client):
    (name,) = fresh_names(1)
    data = payloads(1, seed=9)[0]
    with client.reserve(name, LAYOUT) as r:
        dst = np.frombuffer(r, dtype=np.uint8)
        assert any(lo <= dst.ctypes.data < hi for lo, hi in _arena_ranges())
        dst[:] = data
        del dst
        r.commit()
    with client.acquire(name) as lease:
        assert bytes(memoryview(lease)) == data.tobytes()
    # a reservation left uncommitted is aborted: the object never appears
    (other,) = fresh_names(1)
    with client.reserve(other, LAYOUT):
        pass
    assert not client.lookup([other]).results[0].present


def test_torch_tensors_as_sources_and_destinations(client):
    torch = pytest.importorskip("torch", reason="torch is not in this venv (tested in the sglang venv)")
    names = fresh_names(3)
    src = [torch.randint(-1000, 1000, (LAYOUT.raw_bytes() // 2,), dtype=torch.int16) for _ in names]
    assert client.put_many(names, LAYOUT, src) == [None] * 3
    dst = [torch.zeros_like(s) for s in src]
    ptrs = [d.data_ptr() for d in dst]
    assert all(r.ok for r in client.get_many(names, dst))
    for s, d, p in zip(src, dst, ptrs):
        assert torch.equal(s, d) and d.data_ptr() == p
    with pytest.raises(ValueError):
        client.get_many(names[:1], [torch.zeros(LAYOUT.raw_bytes(), dtype=torch.uint8)[::2]])


def test_raw_address_ranges(client):
    (name,) = fresh_names(1)
    data = payloads(1, seed=5)[0]
    client.put(name, LAYOUT, (data.ctypes.data, data.nbytes))
    out = np.empty_like(data)
    info = client.get_into(name, (out.ctypes.data, out.nbytes))
    assert info.payload_bytes == data.nbytes and np.array_equal(out, data)


# ---- errors map to kvstash.errors with the gRPC code ----


def test_errors_carry_the_status_code(client, service):
    (missing,) = fresh_names(1)
    with pytest.raises(errors.NotFound) as e:
        client.get(missing)
    assert e.value.code == 5 and isinstance(e.value, errors.KvStashError)
    res = client.get_many([missing], [bytearray(LAYOUT.raw_bytes())])
    assert isinstance(res[0].error, errors.NotFound) and not res[0]

    (name,) = fresh_names(1)
    data = payloads(1)[0]
    client.put(name, LAYOUT, data)
    with pytest.raises(errors.AlreadyExists) as e:
        client.put(name, LAYOUT, data)
    assert e.value.code == 6
    client.put(name, LAYOUT, data, overwrite=True)

    # wrong size: per-item InvalidArgument, the other items still stored
    (a, b) = fresh_names(2)
    got = client.put_many([a, b], LAYOUT, [data[:100], data])
    assert isinstance(got[0], errors.InvalidArgument) and got[0].code == 3 and got[1] is None
    # a destination too small
    with pytest.raises(errors.InvalidArgument):
        client.get_into(b, bytearray(10))
    # read-only destination
    with pytest.raises(BufferError):
        client.get_into(b, bytes(LAYOUT.raw_bytes()))
    with pytest.raises(TypeError):
        client.put(b, LAYOUT, 12345)
    with pytest.raises(errors.InvalidArgument):
        kvstash.Handoff.parse(b"\xff\x00 not a handoff")
    with pytest.raises(errors.InvalidArgument):
        bad = kvstash.KvLayout(num_layers=0, total_kv_heads=2, head_dim=16, num_tokens=1)
        bad.validate()
    assert [type(x) for x in client.delete([b, missing])] == [type(None), errors.NotFound]


def test_unreachable_service_is_unavailable(tmp_path):
    with pytest.raises(errors.Unavailable) as e:
        kvstash.Client("unix://" + str(tmp_path / "nobody.sock"), connect_timeout_s=0.3)
    assert e.value.code == 14 and isinstance(e.value, ConnectionError)


def test_pin_unpin_delete_and_stats(client):
    names = fresh_names(3)
    assert client.put_many(names, LAYOUT, payloads(3)) == [None] * 3
    assert client.pin(names[:2]) == [None, None]
    stats = client.stats()
    assert stats["pinned_objects"] >= 2
    cpu = [t for t in stats["tiers"] if t["tier"] == "cpu"][0]
    assert cpu["objects"] >= 3 and cpu["capacity_bytes"] > 0
    assert client.unpin(names[:2]) == [None, None]
    assert client.delete(names) == [None] * 3
    assert [p.present for p in client.lookup(names).results] == [False] * 3


# ---- TCP: the byte-stream path ----


def test_tcp_target_streams_the_same_bytes():
    from kvstash_testing import Service

    with Service(tcp=True) as svc:
        with kvstash.Client(svc.target) as c:
            assert not c.shared_memory_attached
            names = fresh_names(4)
            data = payloads(4, seed=11)
            assert c.put_many(names, LAYOUT, data) == [None] * 4
            out = [np.zeros_like(d) for d in data]
            assert all(r.ok for r in c.get_many(names, out))
            assert all(np.array_equal(d, o) for d, o in zip(data, out))
            assert bytes(c.get(names[0])) == data[0].tobytes()
            with pytest.raises(errors.FailedPrecondition):
                c.acquire(names[0])


def test_segments_gather_on_put_and_scatter_on_get(client, service):
    """A list of buffers is one object: K and V regions of an engine page, say."""
    from kvstash_testing import Service

    names = fresh_names(3)
    data = payloads(3, seed=21)
    half = LAYOUT.raw_bytes() // 2
    parts = [[d[:half], d[half:]] for d in data]
    parts[2] = [data[2][:7], data[2][7:300], data[2][300:]]
    assert client.put_many(names, LAYOUT, parts) == [None] * 3
    for n, d in zip(names, data):
        assert bytes(client.get(n)) == d.tobytes()
    outs = [[np.zeros(half, np.uint8), np.zeros(half, np.uint8)] for _ in names]
    assert all(r.ok for r in client.get_many(names, outs))
    for d, (k, v) in zip(data, outs):
        assert np.array_equal(np.concatenate([k, v]), d)
    # too short in total: per-item InvalidArgument
    (short,) = fresh_names(1)
    got = client.put_many([short], LAYOUT, [[data[0][:half], data[0][half + 1 :]]])
    assert isinstance(got[0], errors.InvalidArgument)
    # the stream path gathers and scatters too
    with Service(tcp=True) as svc, kvstash.Client(svc.target) as tcp:
        assert tcp.put_many(names, LAYOUT, parts) == [None] * 3
        outs = [[np.zeros(half, np.uint8), np.zeros(half, np.uint8)] for _ in names]
        assert all(r.ok for r in tcp.get_many(names, outs))
        for d, (k, v) in zip(data, outs):
            assert np.array_equal(np.concatenate([k, v]), d)


def test_closed_client_refuses_calls(service):
    c = kvstash.Client(service.target)
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.lookup(fresh_names(1))
