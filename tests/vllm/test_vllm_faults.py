"""vLLM (CPU) with the KVStash connector when cachesvc is killed mid-run: one fast failure, then the
circuit breaker; vLLM computes everything, same tokens, no hang, no exception."""

import os
import tempfile

import pytest

from vllm_testing import (CacheService, assert_no_engine_exception, connector, prompt_tokens,
                          run_engine)


@pytest.fixture(scope="module")
def svc():
    s = CacheService()
    yield s
    s.close()


def test_cachesvc_killed_mid_run_costs_one_failure_then_recompute(svc):
    prompt = prompt_tokens(600, offset=2000)
    ref = run_engine({"prompts": [prompt], "prefix_caching": False})
    stats = os.path.join(tempfile.mkdtemp(), "kill")
    # The first request stores; cachesvc is SIGKILLed before the second; the breaker's long
    # backoff keeps it open for the third.
    r = run_engine({"prompts": [prompt, prompt, prompt],
                    "connector": connector(svc, stats, breaker_backoff_ms=600000,
                                           rpc_timeout_ms=1000),
                    "stats_path": stats, "kill_before": {"1": svc.pid}})
    assert_no_engine_exception(r)
    assert r["outputs"] == [ref["outputs"][0]] * 3
    s, w = r["stats"]["scheduler"], r["stats"].get("worker", {})
    assert s.get("service_failures", 0) == 1, s  # one failure ...
    assert s.get("breaker_skips", 0) >= 1, s  # ... then skipped, not retried per request
    assert w.get("stored_blocks", 0) == 4, w  # the first request's (600 tokens: 4 blocks)
