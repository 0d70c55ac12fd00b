"""KVStash as SGLang's HiCache L3 storage (``--hicache-storage-backend dynamic``).

Pages move between SGLang's host KV pool and the cachesvc shared-memory arena by one copy each
way, in C++ with the GIL released (the zero-copy v1 interface: ``batch_get_v1``/``batch_set_v1``
get host indices, never tensors). Turn it on with::

    python -m sglang.launch_server ... --enable-hierarchical-cache \\
      --hicache-storage-backend dynamic \\
      --hicache-storage-backend-extra-config '{"backend_name": "kvstash",
        "module_path": "kvstash.sglang_backend", "class_name": "KVStashHiCacheStorage",
        "interface_v1": 1, "target": "unix:///tmp/kvstash.sock"}'

Extra config keys: ``target`` (cachesvc; else ``$KVSTASH_TARGET``, else cachesvc's default
``unix:///tmp/kvstash.sock``), ``namespace`` (tenant /
cache salt, default ``"sglang"``), ``model_revision`` (weights revision folded into the key),
``rpc_timeout_s``.

One object per page. Its payload is the page's bytes as the host pool holds them (the pool's
``get_page_buffer_meta`` regions, concatenated: K then V for ``page_first``/``page_head``, per
layer K and V for ``layer_first``), described by a raw ``KvLayout`` of the page (layers x
K|V x page_size tokens x heads x head_dim). The byte order is the pool layout's, not KVStash's
canonical one, so the layout name is part of the model fingerprint: pages stored under one
layout never load into another. The key of a page is ``ObjectName(namespace,
fingerprint, engine_token_hash(sglang_page_hash))`` (docs/connector.md "SGLang"): SGLang's page
hash already commits to the whole prefix; the fingerprint adds the model, dtype, page size,
layer range and this rank's head range (tensor parallelism: each rank stores its own heads).

The data path never raises into SGLang: a failed call logs once per kind and reports the pages
as missing (SGLang then recomputes them).
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)

import kvstash
from kvstash import errors
from kvstash.keys import engine_token_hash

logger = logging.getLogger(__name__)

_DTYPES = {
    torch.float16: kvstash.DType.F16,
    torch.bfloat16: kvstash.DType.BF16,
    torch.float32: kvstash.DType.F32,
}
DEFAULT_TARGET = "unix:///tmp/kvstash.sock"
_LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_head")


class KVStashHiCacheStorage(HiCacheStorage):
    """HiCache storage backed by a cachesvc node (MHA models; MLA is refused at start-up)."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Any = None) -> None:
        extra = dict(storage_config.extra_config or {})
        if storage_config.is_mla_model:
            raise ValueError(
                "kvstash: MLA models are not supported by the KVStash HiCache backend (its "
                "objects are K|V pages); use another backend for MLA"
            )
        self.storage_config = storage_config
        self.namespace = str(extra.get("namespace", "sglang"))
        self.model_revision = str(extra.get("model_revision", ""))
        # cachesvc's own default listen address when nothing else is said.
        target = extra.get("target") or os.environ.get("KVSTASH_TARGET") or DEFAULT_TARGET
        self.client = kvstash.Client(str(target), rpc_timeout_s=float(extra.get("rpc_timeout_s", 10.0)))
        self.tp_rank = storage_config.tp_rank
        self.tp_size = storage_config.tp_size
        self.mem_pool_host = None
        self._fingerprint: Optional[bytes] = None
        self._layout: Optional[kvstash.KvLayout] = None
        self._page_bytes = 0
        self._warned: set = set()

    # ---- set-up ----

    def register_mem_pool_host(self, mem_pool_host) -> None:
        """Derives the page layout and the model fingerprint from the host pool."""
        super().register_mem_pool_host(mem_pool_host)
        pool = mem_pool_host
        if pool.layout not in _LAYOUTS:
            raise ValueError(f"kvstash: host pool layout {pool.layout!r} is not supported ({_LAYOUTS})")
        if pool.dtype not in _DTYPES:
            raise ValueError(f"kvstash: KV dtype {pool.dtype} is not supported (f16, bf16, f32)")
        if getattr(pool, "v_head_dim", pool.head_dim) != pool.head_dim:
            raise ValueError("kvstash: K and V head dims differ; the backend stores K|V pages")
        if getattr(pool, "dcp_size", 1) != 1:
            raise ValueError("kvstash: decode context parallelism is not supported")
        dtype = _DTYPES[pool.dtype]
        heads = pool.head_num
        begin = self.tp_rank * heads
        total = heads * self.tp_size
        layer_begin = getattr(pool, "start_layer", 0) or 0
        spec = kvstash.ModelSpec(
            # The byte order of a page is the pool layout's: part of what makes pages interchangeable.
            model_id=f"sglang/{pool.layout}/p{pool.page_size}:{self.storage_config.model_name}",
            weights_revision=self.model_revision,
            dtype=dtype,
            num_layers=layer_begin + pool.layer_num,
            layer_begin=layer_begin,
            layer_end=layer_begin + pool.layer_num,
            total_kv_heads=total,
            head_begin=begin,
            head_end=begin + heads,
            head_dim=pool.head_dim,
        )
        self._fingerprint = spec.fingerprint()
        self._layout = kvstash.KvLayout(
            num_layers=pool.layer_num,
            layer_begin=layer_begin,
            total_kv_heads=total,
            head_begin=begin,
            head_end=begin + heads,
            head_dim=pool.head_dim,
            num_tokens=pool.page_size,
            dtype=dtype,
        )
        self._layout.validate()
        self._page_bytes = self._layout.raw_bytes()
        logger.info(
            "kvstash HiCache backend: %s, %s pages of %d bytes, namespace %r, fingerprint %s",
            self.client.target, pool.layout, self._page_bytes, self.namespace,
            self._fingerprint.hex(),
        )  # fmt: skip

    # ---- keys and page memory ----

    def names(self, keys: List[str]) -> List[kvstash.ObjectName]:
        """The KVStash object names of SGLang page hashes."""
        if self._fingerprint is None:
            raise RuntimeError("kvstash: register_mem_pool_host was not called")
        return [kvstash.ObjectName(self.namespace, self._fingerprint, engine_token_hash(k)) for k in keys]

    def _page_regions(self, keys: List[str], host_indices: torch.Tensor) -> List[list]:
        """Per page, its (address, nbytes) regions in the host pool, in payload order."""
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        if len(ptrs) % max(1, len(keys)) != 0:
            raise RuntimeError(f"kvstash: {len(ptrs)} regions for {len(keys)} pages")
        per = len(ptrs) // len(keys)
        pages = []
        for i in range(len(keys)):
            regions = [(int(ptrs[j]), int(sizes[j])) for j in range(i * per, (i + 1) * per)]
            if sum(n for _, n in regions) != self._page_bytes:
                raise RuntimeError("kvstash: a page's regions do not add up to the page layout")
            pages.append(regions)
        return pages

    def _warn(self, kind: str, exc: BaseException) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("kvstash %s failed (pages treated as missing): %s", kind, exc)

    # ---- zero-copy v1 interface ----

    def batch_set_v1(
        self,
        keys: List[str],
        host_indices: torch.Tensor,
        extra_info: Optional[HiCacheStorageExtraInfo] = None,
    ) -> List[bool]:
        if not keys:
            return []
        try:
            pages = self._page_regions(keys, host_indices)
            errs = self.client.put_many(self.names(keys), self._layout, pages)
        except Exception as exc:  # never into the engine
            self._warn("batch_set_v1", exc)
            return [False] * len(keys)
        # A page stored before (by this or another instance) is as good as stored now.
        return [e is None or isinstance(e, errors.AlreadyExists) for e in errs]

    def batch_get_v1(
        self,
        keys: List[str],
        host_indices: torch.Tensor,
        extra_info: Optional[HiCacheStorageExtraInfo] = None,
    ) -> List[bool]:
        if not keys:
            return []
        try:
            pages = self._page_regions(keys, host_indices)
            results = self.client.get_many(self.names(keys), pages)
        except Exception as exc:
            self._warn("batch_get_v1", exc)
            return [False] * len(keys)
        # An object of another size would leave part of the page stale: a miss.
        return [r.ok and r.info.payload_bytes == self._page_bytes for r in results]

    def batch_exists(
        self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None
    ) -> int:
        """Number of leading pages present, in one Lookup."""
        if not keys:
            return 0
        try:
            return int(self.client.lookup(self.names(keys)).longest_prefix)
        except Exception as exc:
            self._warn("batch_exists", exc)
            return 0

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # ---- the older tensor interface ----
    # SGLang calls these only without "interface_v1": 1. Their flat data pages order a
    # layer_first page differently from the v1 regions, so one key could name two byte orders;
    # the backend refuses them instead (every page a miss, nothing stored) and says so once.

    def _v1_required(self) -> None:
        self._warn(
            "the tensor interface",
            RuntimeError('set "interface_v1": 1 in --hicache-storage-backend-extra-config'),
        )

    def get(self, key, target_location=None, target_sizes=None):
        self._v1_required()
        return None

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        self._v1_required()
        return [None] * len(keys)

    def set(self, key, value=None, target_location=None, target_sizes=None) -> bool:
        self._v1_required()
        return False

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None) -> bool:
        self._v1_required()
        return False

    def clear(self) -> None:
        """Objects are left to cachesvc's eviction (other engines may share them)."""

    def get_stats(self):
        return None

    def close(self) -> None:
        self.client.close()
