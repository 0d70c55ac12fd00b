"""Unit tests of the vLLM connector's engine-independent parts (kvstash.vllm_support) and of its
key derivation, without a vLLM engine running: keys, circuit breaker, block plans, layout."""

import json
import os
import tempfile

import pytest
import torch

import kvstash
from kvstash import vllm_support as vs
from kvstash.keys import engine_token_hash


def ident(**kw):
    base = dict(model_id="m", weights_revision="sha256:ab", tokenizer="t@sha256:cd",
                dtype_code=2, num_layers=30, total_kv_heads=3, head_dim=64, block_size=128,
                hash_algo="sha256", rope=vs.ROPE_NEOX, rope_theta=100000.0, engine="vllm-x")
    base.update(kw)
    return vs.ModelIdentity(**base)


def fingerprint(i: vs.ModelIdentity, hb=0, he=None):
    return kvstash.ModelSpec(
        model_id=i.model_id, weights_revision=i.revision_string(), dtype=kvstash.DType.BF16,
        num_layers=i.num_layers, total_kv_heads=i.total_kv_heads, head_dim=i.head_dim,
        head_begin=hb, head_end=i.total_kv_heads if he is None else he,
        rope=kvstash.RopeConvention.NEOX, rope_theta=i.rope_theta).fingerprint()


# ---- keys ---------------------------------------------------------------------------------------


def test_block_hash_maps_to_same_name_in_every_process():
    h = bytes(range(32))
    a = kvstash.ObjectName("vllm/m", fingerprint(ident()), engine_token_hash(h))
    b = kvstash.ObjectName("vllm/m", fingerprint(ident()), engine_token_hash(bytes(h)))
    assert a == b and a.storage_key == b.storage_key
    assert engine_token_hash(h) != engine_token_hash(h[:-1] + b"\x00")


@pytest.mark.parametrize("field,value", [
    ("weights_revision", "sha256:other"), ("tokenizer", "t@sha256:ef"), ("block_size", 256),
    ("hash_algo", "sha256_cbor"), ("engine", "vllm-y"), ("num_layers", 29),
    ("head_dim", 128), ("rope_theta", 10000.0), ("model_id", "m2")])
def test_identity_fields_change_the_fingerprint(field, value):
    assert fingerprint(ident()) != fingerprint(ident(**{field: value}))


def test_tp_head_ranges_have_their_own_fingerprints():
    i = ident(total_kv_heads=4)
    assert i.heads_of_rank(0, 2) == (0, 2) and i.heads_of_rank(1, 2) == (2, 4)
    assert fingerprint(i, 0, 2) != fingerprint(i, 2, 4) != fingerprint(i, 0, 4)
    # fewer KV heads than ranks: each rank holds one (replicated) head
    j = ident(total_kv_heads=2)
    assert [j.heads_of_rank(r, 4) for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]


def test_cache_salt_selects_a_namespace_and_hides_the_salt():
    assert vs.salted_namespace("vllm/m", None) == "vllm/m"
    assert vs.salted_namespace("vllm/m", "") == "vllm/m"
    a = vs.salted_namespace("vllm/m", "tenant-secret")
    assert a.startswith("vllm/m/salt-") and "tenant-secret" not in a
    assert a != vs.salted_namespace("vllm/m", "other")


def test_local_dir_revision_tracks_file_bytes():
    with tempfile.TemporaryDirectory() as d:
        assert vs.local_dir_revision(d, (".safetensors",)) is None
        p = os.path.join(d, "model.safetensors")
        open(p, "wb").write(b"abc")
        r1 = vs.local_dir_revision(d, (".safetensors",))
        open(p, "wb").write(b"abd")
        assert r1.startswith("sha256:") and r1 != vs.local_dir_revision(d, (".safetensors",))
    assert vs.local_dir_revision("HuggingFaceTB/SmolLM2", (".safetensors",)) is None


# ---- block plans --------------------------------------------------------------------------------


def test_loadable_blocks_keep_the_last_token_computed():
    assert vs.loadable_blocks(1000, 128, 7) == 7  # 896 of 1000 tokens
    assert vs.loadable_blocks(1024, 128, 8) == 7  # exactly 8 blocks: the last one is computed
    assert vs.loadable_blocks(1025, 128, 8) == 8
    assert vs.loadable_blocks(100, 128, 0) == 0
    assert vs.loadable_blocks(1, 128, 0) == 0
    assert vs.loadable_blocks(1000, 128, 3) == 3  # never past the hashes vLLM has


def test_storable_blocks_are_the_full_computed_blocks():
    assert vs.storable_blocks(1000, 128, 7) == 7  # partial tail (104 tokens) never stored
    assert vs.storable_blocks(300, 128, 7) == 2  # chunked prefill: what is computed
    assert vs.storable_blocks(1023, 128, 7) == 7  # decode: block 7 not full yet
    assert vs.storable_blocks(1024, 128, 8) == 8  # filled by decode: stored like the prompt's
    assert vs.storable_blocks(1024, 128, 7) == 7  # never past the hashes vLLM has


# ---- config -------------------------------------------------------------------------------------


def test_config_parses_and_refuses_unknown_keys():
    c = vs.ConnectorConfig.from_extra({"target": "unix:///x", "rpc_timeout_ms": "250",
                                       "handoff_required": "true"})
    assert c.target == "unix:///x" and c.rpc_timeout_ms == 250 and c.handoff_required is True
    with pytest.raises(vs.UnsafeConfigError, match="unknown"):
        vs.ConnectorConfig.from_extra({"taget": "unix:///x"})
    with pytest.raises(vs.UnsafeConfigError, match="bad value"):
        vs.ConnectorConfig.from_extra({"rpc_timeout_ms": "soon"})
    assert c.handoff_land_tier == "cpu"
    assert vs.ConnectorConfig.from_extra({"handoff_land_tier": "gpu"}).handoff_land_tier == "gpu"
    with pytest.raises(vs.UnsafeConfigError, match="handoff_land_tier"):
        vs.ConnectorConfig.from_extra({"handoff_land_tier": "GPU0"})


# ---- circuit breaker ----------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_breaker_one_failure_then_skip_until_a_probe_succeeds():
    clock = Clock()
    b = vs.CircuitBreaker(0.5, 4.0, clock)
    assert b.allow()
    b.failure()
    assert b.is_open and b.opened == 1
    assert not b.allow() and not b.allow()  # skipped, at no cost
    assert b.skipped == 2
    clock.t = 0.6
    assert b.allow()  # one probe
    assert not b.allow()  # only one
    b.failure()  # probe failed: backoff doubles
    clock.t = 1.2
    assert not b.allow()
    clock.t = 1.7
    assert b.allow()
    b.success()
    assert not b.is_open and b.allow() and b.allow()
    b.failure()  # a new outage starts from the base backoff
    clock.t = 2.3
    assert b.allow()


def test_breaker_backoff_is_capped():
    clock = Clock()
    b = vs.CircuitBreaker(1.0, 2.0, clock)
    b.failure()
    for _ in range(5):
        clock.t += 10
        assert b.allow()
        b.failure()
    clock.t += 2.0
    assert b.allow()


# ---- counters -----------------------------------------------------------------------------------


def test_counters_flush_json_only_when_changed():
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "s.json")
        c = vs.Counters(p)
        c.flush()
        assert not os.path.exists(p)
        c.add("a", 2)
        c.add("a")
        c.add("b", 0)
        c.flush()
        assert json.load(open(p)) == {"a": 3}


# ---- layout -------------------------------------------------------------------------------------


def test_gather_gives_canonical_objects_and_scatter_inverts_it():
    L, nb, H, bs, D = 3, 6, 2, 4, 8
    layers = [torch.randn(nb, H, bs, 2 * D).to(torch.bfloat16) for _ in range(L)]
    blocks = [4, 1, 3]
    out = torch.empty(len(blocks), L, 2, bs, H, D, dtype=torch.bfloat16)
    vs.gather_blocks(layers, blocks, out)
    for j, b in enumerate(blocks):
        for l in range(L):
            # vLLM CPU block interior: per head, K rows of all tokens then V rows
            per_head = layers[l][b].view(H, 2, bs, D)
            for t in range(bs):
                for h in range(H):
                    assert torch.equal(out[j, l, 0, t, h], per_head[h, 0, t])
                    assert torch.equal(out[j, l, 1, t, h], per_head[h, 1, t])
    # scatter into fresh pools at other block ids, layer by layer
    fresh = [torch.zeros_like(x) for x in layers]
    dest = [0, 5, 2]
    for l in range(L):
        vs.scatter_layer(fresh[l], l, dest, out)
    for l in range(L):
        for s, d in zip(blocks, dest):
            assert torch.equal(fresh[l][d], layers[l][s])
        untouched = [i for i in range(nb) if i not in dest]
        assert torch.count_nonzero(fresh[l][untouched]) == 0


def test_native_copy_matches_the_torch_reference_at_vllm_sizes():
    # SmolLM2-135M on vLLM CPU: 30 layers, 3 KV heads, 128-token blocks, head dim 64, bf16.
    L, nb, H, bs, D = 30, 9, 3, 128, 64
    layers = [torch.randn(nb, H, bs, 2 * D).to(torch.bfloat16) for _ in range(L)]
    blocks = [7, 0, 4, 8]
    native = torch.empty(len(blocks), L, 2, bs, H, D, dtype=torch.bfloat16)
    ref = torch.empty_like(native)
    vs.gather_blocks(layers, blocks, native)
    vs.gather_blocks_torch(layers, blocks, ref)
    assert torch.equal(native, ref)
    # scatter from one buffer per object (as from read leases), against the torch reference
    a = [torch.zeros_like(x) for x in layers]
    b = [torch.zeros_like(x) for x in layers]
    dest = [1, 3, 2, 6]
    objects = [native[j].view(torch.uint8).numpy() for j in range(len(blocks))]
    for l in range(L):
        vs.scatter_layer(a[l], l, dest, objects, num_layers=L)
        vs.scatter_layer_torch(b[l], l, dest, ref)
        assert torch.equal(a[l], b[l])
        assert torch.equal(a[l][dest], layers[l][blocks])


def test_native_copy_refuses_what_does_not_fit_and_copies_nothing():
    L, nb, H, bs, D = 2, 4, 2, 4, 8
    layers = [torch.randn(nb, H, bs, 2 * D).to(torch.bfloat16) for _ in range(L)]
    out = torch.zeros(2, L, 2, bs, H, D, dtype=torch.bfloat16)
    with pytest.raises(IndexError):
        vs.gather_blocks(layers, [1, nb], out)
    with pytest.raises(IndexError):
        vs.gather_blocks(layers, [-1, 0], out)
    assert torch.count_nonzero(out) == 0
    with pytest.raises(ValueError):  # objects buffer of the wrong size
        vs.gather_blocks(layers, [1], out)
    with pytest.raises(ValueError):  # one object buffer per block
        vs.scatter_layer(layers[0], 0, [0, 1], [out[0].view(torch.uint8).numpy()], num_layers=L)
    with pytest.raises(ValueError):  # layer id beyond the object's layers
        vs.scatter_layer(layers[0], L, [0], out[:1])
    with pytest.raises(ValueError):  # a non-contiguous paged tensor
        vs.scatter_layer(layers[0].transpose(1, 2), 0, [0], out[:1])
    ro = bytes(out[0].view(torch.uint8).numpy().tobytes())
    with pytest.raises(Exception):  # a read-only destination for a gather
        kvstash._native.copy_paged_blocks(layers, [0, 1], [0], ro, num_layers=L, heads=H,
                                          block_size=bs, head_bytes=2 * D, to_objects=True)


# ---- start-up refusals (the connector's identity check, with a stand-in vLLM config) -----------


def fake_config(tmp, **over):
    from types import SimpleNamespace as NS

    os.makedirs(tmp, exist_ok=True)
    open(os.path.join(tmp, "model.safetensors"), "wb").write(b"weights")
    open(os.path.join(tmp, "tokenizer.json"), "w").write("{}")
    mc = NS(model=tmp, revision=None, tokenizer=tmp, tokenizer_revision=None,
            dtype=torch.bfloat16, use_mla=False, served_model_name=None,
            hf_text_config=NS(rope_parameters={"rope_theta": 100000.0}),
            get_num_layers=lambda pc: 30, get_total_num_kv_heads=lambda: 3,
            get_head_size=lambda: 64)
    cc = NS(cache_dtype="auto", block_size=128, prefix_caching_hash_algo="sha256")
    pc = NS(pipeline_parallel_size=1, tensor_parallel_size=1)
    ktc = NS(kv_load_failure_policy="recompute")
    cfg = NS(model_config=mc, cache_config=cc, parallel_config=pc, kv_transfer_config=ktc)
    for k, v in over.items():
        obj, attr = k.split(".")
        setattr(getattr(cfg, obj), attr, v)
    return cfg


def test_identity_of_a_local_model_hashes_weights_and_tokenizer():
    vc = pytest.importorskip("kvstash.vllm_connector")
    with tempfile.TemporaryDirectory() as d:
        i = vc._identity(fake_config(d), vs.ConnectorConfig())
        assert i.weights_revision.startswith("sha256:") and "@sha256:" in i.tokenizer
        assert (i.num_layers, i.total_kv_heads, i.head_dim, i.block_size) == (30, 3, 64, 128)
        assert i.dtype_code == 2 and i.rope == vs.ROPE_NEOX and i.rope_theta == 100000.0
        # an explicit revision wins
        j = vc._identity(fake_config(d), vs.ConnectorConfig(model_revision="abc123"))
        assert j.weights_revision == "abc123"


@pytest.mark.parametrize("override,message", [
    ({"kv_transfer_config.kv_load_failure_policy": "fail"}, "kv_load_failure_policy"),
    ({"cache_config.cache_dtype": "fp8"}, "KV cache dtype"),
    ({"model_config.use_mla": True}, "MLA"),
    ({"parallel_config.pipeline_parallel_size": 2}, "pipeline"),
    ({"cache_config.prefix_caching_hash_algo": "xxhash"}, "PYTHONHASHSEED"),
    ({"model_config.model": "some-org/some-model"}, "no revision"),
])
def test_unsafe_configurations_are_refused_at_start_up(override, message, monkeypatch):
    vc = pytest.importorskip("kvstash.vllm_connector")
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(vs.UnsafeConfigError, match=message):
            vc._identity(fake_config(d, **override), vs.ConnectorConfig())


def test_xxhash_block_hashes_are_accepted_with_a_fixed_seed(monkeypatch):
    vc = pytest.importorskip("kvstash.vllm_connector")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    with tempfile.TemporaryDirectory() as d:
        cfg = fake_config(d, **{"cache_config.prefix_caching_hash_algo": "xxhash"})
        assert vc._identity(cfg, vs.ConnectorConfig()).hash_algo == "xxhash"
