"""Tensor parallelism: vLLM (CPU) at TP=2 with the KVStash connector. Each rank stores and loads
only its own KV heads (its object names carry the rank's head range in the model fingerprint).

SmolLM2-135M has 9 attention heads and 3 KV heads: vLLM refuses TP=2 for it. The model here is
a 4-layer Llama with random weights and 4 attention / 2 KV heads, made by transformers from a
config (vllm_testing.tiny_tp_model_dir); its tokens mean nothing, but they are deterministic, so
runs are compared token for token. On this 2-core machine each rank gets one core
(VLLM_CPU_OMP_THREADS_BIND=0|1)."""

import os
import tempfile

import pytest

from vllm_testing import (CacheService, assert_no_engine_exception, connector, prompt_tokens,
                          run_engine, tiny_tp_model_dir)

N_PROMPT = 1000
HIT_BLOCKS = (N_PROMPT - 1) // 128  # 7
TP_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@pytest.fixture(scope="module")
def svc():
    s = CacheService()
    yield s
    s.close()


def tp_run(spec, **kw):
    spec = dict(spec, model=tiny_tp_model_dir(), tp=2, max_tokens=8)
    return run_engine(spec, env=TP_ENV, **kw)


def test_tp2_ranks_store_and_load_their_own_heads(svc):
    prompt = prompt_tokens(N_PROMPT, offset=5000)
    ref = tp_run({"prompts": [prompt, prompt], "prefix_caching": True})["outputs"]

    st = os.path.join(tempfile.mkdtemp(), "a")
    a = tp_run({"prompts": [prompt], "connector": connector(svc, st), "stats_path": st})
    assert_no_engine_exception(a)
    for w in (a["stats"]["worker"], a["stats"]["worker1"]):
        assert w.get("stored_blocks") == HIT_BLOCKS, a["stats"]
    assert a["outputs"][0] == ref[0]
    # one object per block and rank: the ranks' head ranges name different objects
    cpu = next(t for t in svc.stats()["tiers"] if t["tier"] == "cpu")
    assert cpu["objects"] == 2 * HIT_BLOCKS, svc.stats()

    st = os.path.join(tempfile.mkdtemp(), "b")
    b = tp_run({"prompts": [prompt], "connector": connector(svc, st), "stats_path": st})
    assert_no_engine_exception(b)
    s = b["stats"]["scheduler"]
    assert s["hit_tokens"] == HIT_BLOCKS * 128, b["stats"]
    for w in (b["stats"]["worker"], b["stats"]["worker1"]):
        assert w.get("loaded_blocks") == HIT_BLOCKS and w.get("load_blocks_failed", 0) == 0, \
            b["stats"]
    assert b["outputs"][0] == ref[1]  # vLLM's own prefix-cache hit of the same blocks
