"""The SGLang HiCache backend against the pinned sglang package's own classes (CPU host pools).

Runs in the sglang venv (scripts/setup_sglang.sh). Loads the backend the way SGLang does for
``--hicache-storage-backend dynamic`` (StorageBackendFactory with extra_config), builds small
MHA host pools of every layout on CPU, and moves pages through a real cachesvc.
"""

from __future__ import annotations

import itertools
import warnings

import pytest

warnings.filterwarnings("ignore")
torch = pytest.importorskip("torch")
sglang_storage = pytest.importorskip("sglang.srt.mem_cache.hicache_storage")

from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402

from kvstash.sglang_backend import KVStashHiCacheStorage  # noqa: E402
from kvstash_testing import Service  # noqa: E402

LAYERS, HEADS, HEAD_DIM, PAGE = 3, 2, 16, 4
DEVICE_TOKENS = 64
_seq = itertools.count()


def host_pool(layout: str, dtype=torch.float16) -> MHATokenToKVPoolHost:
    k = tuple(torch.zeros(DEVICE_TOKENS, HEADS, HEAD_DIM, dtype=dtype) for _ in range(LAYERS))
    v = tuple(torch.zeros(DEVICE_TOKENS, HEADS, HEAD_DIM, dtype=dtype) for _ in range(LAYERS))
    info = MHABufferInfo(
        buffers=KVBuffers(
            k=k,
            v=v,
            k_data_ptrs=torch.tensor([t.data_ptr() for t in k], dtype=torch.uint64),
            v_data_ptrs=torch.tensor([t.data_ptr() for t in v], dtype=torch.uint64),
            layout=KVBufferLayout.NHD,
        ),
        page_size=PAGE,
        head_num=HEADS,
        head_dim=HEAD_DIM,
        v_head_dim=HEAD_DIM,
        dtype=dtype,
        device=torch.device("cpu"),
    )
    return MHATokenToKVPoolHost(
        info, 2.0, 0, PAGE, layout, pin_memory=False, device="cpu",
        device_capacity_tokens=DEVICE_TOKENS, start_layer=0, end_layer=LAYERS,
    )  # fmt: skip


def storage_config(target: str, tp_rank: int = 0, tp_size: int = 1, **extra) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
        model_name="SmolLM2-test",
        extra_config={
            "backend_name": "kvstash", "module_path": "kvstash.sglang_backend",
            "class_name": "KVStashHiCacheStorage", "interface_v1": 1, "target": target, **extra,
        },
    )  # fmt: skip


def backend_for(svc: Service, pool, **kw) -> KVStashHiCacheStorage:
    # As SGLang's cache controller attaches a storage backend.
    backend = StorageBackendFactory.create_backend("dynamic", storage_config(svc.target, **kw), pool)
    backend.register_mem_pool_host(pool)
    return backend


def page_indices(pages):
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages])


def page_bytes(pool, page: int) -> bytes:
    """A page's bytes as the pool's own accessor flattens them."""
    return pool.get_data_page(page * PAGE, flat=True).view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def svc():
    s = Service()
    yield s
    s.stop()


def test_factory_loads_the_backend_as_a_hicache_storage(svc):
    backend = backend_for(svc, host_pool("page_first"))
    assert isinstance(backend, KVStashHiCacheStorage) and isinstance(backend, HiCacheStorage)


@pytest.mark.parametrize("layout", ["page_first", "page_first_direct", "page_head", "layer_first"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pages_round_trip_byte_identical(svc, layout, dtype):
    pool = host_pool(layout, dtype)
    pool.kv_buffer.view(torch.int16).copy_(
        torch.randint(-30000, 30000, pool.kv_buffer.shape, dtype=torch.int16)
    )
    backend = backend_for(svc, pool)
    keys = [f"{layout}-{dtype}-{next(_seq)}-{i:04x}" for i in range(5)]
    src_pages = [1, 2, 3, 4, 5]
    want = [page_bytes(pool, p) for p in src_pages]
    assert backend.batch_set_v1(keys, page_indices(src_pages)) == [True] * 5
    # Storing the same pages again (another instance did): still success, nothing changes.
    assert backend.batch_set_v1(keys, page_indices(src_pages)) == [True] * 5

    # A fresh backend (a new SGLang process) loads them into other host pages.
    other = backend_for(svc, pool)
    dst_pages = [9, 10, 11, 12, 13]
    for p in dst_pages:
        pool.set_from_flat_data_page(p * PAGE, torch.zeros_like(pool.get_data_page(p * PAGE, flat=True)))
    assert other.batch_get_v1(keys, page_indices(dst_pages)) == [True] * 5
    assert [page_bytes(pool, p) for p in dst_pages] == want


def test_batch_exists_counts_the_leading_pages_present(svc):
    pool = host_pool("page_first")
    backend = backend_for(svc, pool)
    keys = [f"exists-{next(_seq)}-{i}" for i in range(5)]
    assert backend.batch_exists(keys) == 0
    stored = [0, 1, 2, 4]  # page 3 missing
    assert backend.batch_set_v1([keys[i] for i in stored], page_indices([1, 2, 3, 4])) == [True] * 4
    assert backend.batch_exists(keys) == 3
    assert backend.batch_exists(keys[4:]) == 1
    assert backend.exists(keys[0]) and not backend.exists(keys[3])
    # Loads stop counting at the missing page: SGLang reads up to the first False.
    got = backend.batch_get_v1(keys, page_indices([6, 7, 8, 9, 10]))
    assert got == [True, True, True, False, True]


def test_keys_separate_layouts_ranks_and_namespaces(svc):
    keys = [f"sep-{next(_seq)}-{i}" for i in range(2)]
    first = backend_for(svc, host_pool("page_first"))
    assert first.batch_set_v1(keys, page_indices([1, 2])) == [True, True]
    assert first.batch_exists(keys) == 2
    # Same page hashes, but another byte order / another rank's heads / another tenant: misses.
    assert backend_for(svc, host_pool("layer_first")).batch_exists(keys) == 0
    assert backend_for(svc, host_pool("page_first"), tp_rank=1, tp_size=2).batch_exists(keys) == 0
    assert backend_for(svc, host_pool("page_first"), namespace="other").batch_exists(keys) == 0
    assert backend_for(svc, host_pool("page_first")).batch_exists(keys) == 2


def test_the_data_path_never_raises_into_sglang():
    svc = Service()
    pool = host_pool("page_first")
    backend = backend_for(svc, pool)
    keys = [f"down-{next(_seq)}"]
    assert backend.batch_set_v1(keys, page_indices([1])) == [True]
    svc.stop()  # cachesvc killed mid-run
    assert backend.batch_get_v1(keys, page_indices([2])) == [False]
    assert backend.batch_set_v1(keys, page_indices([2])) == [False]
    assert backend.batch_exists(keys) == 0
    # The tensor interface is refused (it would name pages in another byte order).
    assert backend.batch_get(keys) == [None]


def test_misconfigurations_are_refused_at_start_up(tmp_path):
    import kvstash

    with pytest.raises(kvstash.errors.Unavailable):
        StorageBackendFactory.create_backend(
            "dynamic", storage_config("unix://" + str(tmp_path / "none.sock")), None
        )
    cfg = storage_config("unix:///unused")
    cfg.is_mla_model = True
    with pytest.raises(ValueError, match="MLA"):
        KVStashHiCacheStorage(cfg, {})
