"""Prefill/decode handoff between two cachesvc nodes on loopback, through the Python package."""

from __future__ import annotations

import numpy as np
import pytest

import kvstash
from kvstash import errors
from kvstash_testing import Service

FP = kvstash.ModelSpec(model_id="py-handoff", num_layers=2, total_kv_heads=2, head_dim=16).fingerprint()
LAYOUT = kvstash.KvLayout(num_layers=2, total_kv_heads=2, head_dim=16, num_tokens=64)


@pytest.fixture(scope="module")
def nodes():
    # A (prefill) serves peers over TCP; B (decode) has A as its peer and a unix socket, so the
    # decode engine reads the handed-over objects from B's shared-memory arena.
    a = Service(tcp=True, peer_secret=True)
    try:
        b = Service(peer_secret=True, extra_args=["--peer", a.target, "--peer-timeout-ms", "20000"])
    except Exception:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def test_handoff_moves_objects_byte_for_byte(nodes):
    a, b = nodes
    prefill = kvstash.Client(a.target, rpc_timeout_s=30)
    decode = kvstash.Client(b.target, rpc_timeout_s=30)
    assert decode.shared_memory_attached
    tokens = np.arange(4 * 64, dtype=np.uint32)
    names = kvstash.names_for_tokens("pd", FP, tokens, chunk_tokens=64)
    rng = np.random.default_rng(7)
    data = [rng.integers(0, 256, LAYOUT.raw_bytes(), dtype=np.uint8) for _ in names]
    assert prefill.put_many(names, LAYOUT, data) == [None] * 4

    offered = prefill.offer(names, handoff_ms=60_000)
    assert offered.id != 0 and len(offered.names) == 4
    assert list(offered.payload_bytes) == [LAYOUT.raw_bytes()] * 4
    wire = offered.serialize()
    assert isinstance(wire, bytes)
    received = kvstash.Handoff.parse(wire)  # what a router carries to the decode engine
    assert received.id == offered.id and received.node == offered.node
    assert [n.storage_key for n in received.names] == [n.storage_key for n in names]

    assert decode.heartbeat_handoff(received, 60_000) > 0
    fetched = decode.fetch_handoff(received, all_or_nothing=True)
    assert fetched.fetched == 4 and fetched.longest_prefix == 4
    assert fetched.errors == [None] * 4
    assert fetched.fetched_bytes == 4 * LAYOUT.raw_bytes()

    out = [np.zeros_like(d) for d in data]
    results = decode.get_many(names, out)
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(r.served_from == kvstash.Tier.CPU for r in results)
    assert all(np.array_equal(d, o) for d, o in zip(data, out))
    # the handoff ended with the fetch
    with pytest.raises(errors.NotFound):
        decode.heartbeat_handoff(received)


def test_offer_of_nothing_stored_and_released_handoff(nodes):
    a, b = nodes
    prefill = kvstash.Client(a.target, rpc_timeout_s=30)
    decode = kvstash.Client(b.target, rpc_timeout_s=30)
    names = kvstash.names_for_tokens("pd-release", FP, np.arange(64, dtype=np.uint32), chunk_tokens=64)
    with pytest.raises(errors.ResourceExhausted):
        prefill.offer(names)  # nothing stored yet
    data = np.ones(LAYOUT.raw_bytes(), dtype=np.uint8)
    prefill.put(names[0], LAYOUT, data)
    h = prefill.offer(names)
    prefill.release_handoff(h)
    with pytest.raises(errors.NotFound):
        prefill.heartbeat_handoff(h)


def test_land_tier_cpu_lands_and_gpu_without_a_pool_is_refused(nodes):
    a, b = nodes
    prefill = kvstash.Client(a.target, rpc_timeout_s=30)
    decode = kvstash.Client(b.target, rpc_timeout_s=30)
    tokens = np.arange(2 * 64, 4 * 64, dtype=np.uint32)
    names = kvstash.names_for_tokens("pd-land", FP, tokens, chunk_tokens=64)
    rng = np.random.default_rng(11)
    data = [rng.integers(0, 256, LAYOUT.raw_bytes(), dtype=np.uint8) for _ in names]
    assert prefill.put_many(names, LAYOUT, data) == [None] * 2
    h = kvstash.Handoff.parse(prefill.offer(names, handoff_ms=60_000).serialize())

    # B has no GPU pool: refused up front, by name or by enum, with what to configure.
    for gpu in ("gpu", kvstash.Tier.GPU):
        with pytest.raises(errors.FailedPrecondition) as refused:
            decode.fetch_handoff(h, all_or_nothing=True, land_tier=gpu)
        assert "--gpu-pool-capacity" in str(refused.value)
    # Tiers nothing lands in, and names that are no tier.
    for bad in ("tpu", "CPU", kvstash.Tier.SSD, kvstash.Tier.REMOTE):
        with pytest.raises(errors.InvalidArgument):
            decode.fetch_handoff(h, land_tier=bad)
    with pytest.raises(TypeError):
        decode.fetch_handoff(h, land_tier=2.5)
    # Nothing was fetched or released: the handoff is still alive on A, and lands in B's arena.
    assert decode.heartbeat_handoff(h, 60_000) > 0
    assert [k.tier for k in decode.lookup(names).results] == [kvstash.Tier.REMOTE] * 2  # A's only
    fetched = decode.fetch_handoff(h, all_or_nothing=True, land_tier=kvstash.Tier.CPU)
    assert fetched.fetched == 2 and fetched.already_local == 0
    assert fetched.errors == [None] * 2
    out = [np.zeros_like(d) for d in data]
    results = decode.get_many(names, out)
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(r.served_from == kvstash.Tier.CPU for r in results)
    assert all(np.array_equal(d, o) for d, o in zip(data, out))


def test_vllm_connector_handoff_land_tier_reaches_the_decode_node(nodes):
    # The vLLM connector's kv_consumer fetches through kvstash.vllm_support.fetch_handoff with its
    # kv_connector_extra_config (that module imports neither vLLM nor torch).
    from kvstash import vllm_support as vs

    a, b = nodes
    prefill = kvstash.Client(a.target, rpc_timeout_s=30)
    decode = kvstash.Client(b.target, rpc_timeout_s=30)
    names = kvstash.names_for_tokens("pd-vllm-land", FP, np.arange(2 * 64, dtype=np.uint32), chunk_tokens=64)
    data = [np.full(LAYOUT.raw_bytes(), i + 1, dtype=np.uint8) for i in range(len(names))]
    assert prefill.put_many(names, LAYOUT, data) == [None] * 2
    h = prefill.offer(names, handoff_ms=60_000)

    assert vs.ConnectorConfig.from_extra({}).handoff_land_tier == "cpu"
    with pytest.raises(vs.UnsafeConfigError, match="handoff_land_tier"):
        vs.ConnectorConfig.from_extra({"handoff_land_tier": "hbm"})
    gpu = vs.ConnectorConfig.from_extra({"target": b.target, "handoff_land_tier": "gpu"})
    with pytest.raises(errors.FailedPrecondition, match="--gpu-pool-capacity"):
        vs.fetch_handoff(decode, h, gpu)
    cpu = vs.ConnectorConfig.from_extra({"target": b.target, "handoff_land_tier": "cpu"})
    fetched = vs.fetch_handoff(decode, h, cpu)
    assert fetched.fetched == 2 and fetched.errors == [None] * 2
    out = [np.zeros_like(d) for d in data]
    assert all(r.ok and r.served_from == kvstash.Tier.CPU for r in decode.get_many(names, out))
    assert all(np.array_equal(d, o) for d, o in zip(data, out))
