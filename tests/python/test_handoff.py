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
