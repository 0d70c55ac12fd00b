"""Prefill/decode disaggregation with vLLM: a kv_producer vLLM and a kv_consumer vLLM in two
network namespaces, each with its own cachesvc. The producer prefills (one token), stores the
prompt's blocks on its node and offers them (kv_transfer_params["kvstash_handoff"]); the
consumer's node fetches the handoff from the producer's node over the veth link (peers, gRPC
data plane), the consumer loads the blocks from its own node and decodes. Tokens identical to
one instance hitting vLLM's own prefix cache."""

import os
import subprocess
import tempfile

import pytest

from vllm_testing import (CacheService, NetnsPair, assert_no_engine_exception, binary_dir,
                          connector, prompt_tokens, run_engine)

PORT = 47011
SECRET = "vllm-pd-test-cluster-secret-0123456789"


@pytest.fixture(scope="module")
def nodes():
    ns = NetnsPair("pd")
    d = tempfile.mkdtemp(prefix="kvst-pd-")
    secret = os.path.join(d, "secret")
    with open(secret, "w") as fh:
        fh.write(SECRET + "\n")
    peer = ["--peer-secret-file", secret, "--peer-data-plane", "grpc"]
    # Plain TCP beyond loopback needs --insecure-tcp where the build has TLS.
    help_text = subprocess.run([os.path.join(binary_dir(), "cachesvc", "cachesvc"), "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    insecure = ["--insecure-tcp"] if "--insecure-tcp" in help_text else []
    prefill = decode = None
    try:
        prefill = CacheService(listen=f"{ns.addr_a}:{PORT}", netns=ns.a,
                               extra_args=peer + insecure)
        decode = CacheService(netns=ns.b, extra_args=peer + [
            "--peer", f"{ns.addr_a}:{PORT}", "--peer-timeout-ms", "20000"])
        yield ns, prefill, decode
    finally:
        for s in (decode, prefill):
            if s is not None:
                s.close()
        ns.close()


def test_producer_hands_kv_to_consumer_in_another_namespace(nodes):
    ns, prefill, decode = nodes
    prompt = prompt_tokens(1000, offset=4000)
    ref = run_engine({"prompts": [prompt, prompt], "prefix_caching": True})["outputs"]

    st_p = os.path.join(tempfile.mkdtemp(), "p")
    p = run_engine({"prompts": [prompt], "max_tokens": 1, "stats_path": st_p,
                    "connector": connector(prefill, st_p, role="kv_producer")}, netns=ns.a)
    assert_no_engine_exception(p)
    assert p["stats"]["worker"].get("stored_blocks") == 7, p["stats"]
    params = p["kv_transfer_params"][0]
    assert params and "kvstash_handoff" in params, p["kv_transfer_params"]

    st_d = os.path.join(tempfile.mkdtemp(), "d")
    d = run_engine({"prompts": [prompt], "kv_transfer_params": [params], "stats_path": st_d,
                    "connector": connector(decode, st_d, role="kv_consumer")}, netns=ns.b)
    assert_no_engine_exception(d)
    s, w = d["stats"]["scheduler"], d["stats"]["worker"]
    assert s.get("handoff_fetches") == 1 and s.get("handoff_fetched_objects") == 7, s
    assert s["hit_tokens"] >= 896 and w["loaded_tokens"] >= 896, d["stats"]
    assert w.get("store_blocks_queued", 0) == 0  # a consumer never stores
    assert d["outputs"][0] == ref[1]
    assert d["outputs"][0] == ref[0]
