"""Engine-independent parts of the vLLM connector (kvstash.vllm_connector): configuration, the
mapping of vLLM block hashes onto KVStash object names, the circuit breaker, the block <->
object layout conversion and the connector's counters.

Nothing here imports vLLM, so it is unit-tested without an engine (tests/vllm/test_support.py).
torch is imported only by the layout functions.

Key mapping (docs/connector.md "vLLM"): vLLM names every full block of a request by a chained
hash (``request.block_hashes[i]``, computed with ``prefix_caching_hash_algo`` from the parent
block's hash, the block's token ids and the request's extra keys: LoRA name and path,
multimodal hashes, prompt embeddings, and ``cache_salt`` on block 0). KVStash names block *i*:

  namespace        = ``vllm/<model>`` [+ ``/salt-<sha256(cache_salt)[:16]>``]  (or the configured
                     one); the service derives keys inside it, so salts never share objects
  model_fingerprint = ModelFingerprint(model id, weights revision + tokenizer + block size +
                     hash algorithm + vLLM version + attention backend, KV dtype, layers,
                     total KV heads, this rank's KV head range, head dim, RoPE, theta)
  token_hash       = kvstash.keys.engine_token_hash(block_hashes[i]): the position-independent
                     XXH3-128 token hash of the tagged block-hash bytes (docs/python.md "Keys")

The payload of block *i* is the canonical layer-major object of docs/hashing.md:
``[layer][K|V][token][kv_head][head_dim]`` for the block's ``block_size`` tokens at positions
``[i*block_size, (i+1)*block_size)`` and this rank's KV heads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# dtype codes of docs/hashing.md
DTYPE_CODES = {"float16": 1, "bfloat16": 2, "float32": 3}
ROPE_NONE, ROPE_NEOX, ROPE_GPTJ = 0, 1, 2

DEFAULT_TARGET = "unix:///tmp/kvstash.sock"
# Where a kv_consumer's fetched handoff may land (ConnectorConfig.handoff_land_tier).
HANDOFF_LAND_TIERS = ("cpu", "gpu")


class UnsafeConfigError(ValueError):
    """A vLLM configuration under which KVStash keys would not identify the KV (or a load
    failure could not be recomputed). Raised once, at connector start-up."""


def salted_namespace(base: str, cache_salt: Optional[str]) -> str:
    if not cache_salt:
        return base
    return f"{base}/salt-{hashlib.sha256(cache_salt.encode()).hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class ConnectorConfig:
    """``kv_connector_extra_config`` of the KVStash connector (docs/connector.md "vLLM")."""

    target: str = DEFAULT_TARGET  # cachesvc: unix:///path (shared memory) or host:port
    namespace: str = ""  # default vllm/<model>
    model_revision: str = ""  # overrides the weights revision vLLM knows
    rpc_timeout_ms: int = 2000  # every cachesvc call
    connect_timeout_ms: int = 1000
    load_timeout_s: float = 10.0  # a load not done by then becomes load errors
    breaker_backoff_ms: int = 500  # first wait after a failure; doubles up to the max
    breaker_max_backoff_ms: int = 10000
    max_pending_store_bytes: int = 256 << 20  # staged KV waiting for cachesvc; beyond: dropped
    stats_path: str = ""  # JSON counters, written by each side (suffix .scheduler / .worker<r>)
    handoff_ms: int = 30000  # kv_producer: how long offered objects stay pinned
    handoff_required: bool = False  # kv_consumer: a failed fetch fails the lookup (else recompute)
    # kv_consumer: where a fetched handoff lands on this node: "cpu" (the arena) or "gpu" (the
    # node's GPU pool, cachesvc --gpu-pool-capacity; refused with FailedPrecondition without one,
    # and the request then recomputes).
    handoff_land_tier: str = "cpu"

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> "ConnectorConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in (extra or {}).items():
            if k not in known:
                raise UnsafeConfigError(
                    f"KVStash connector: unknown kv_connector_extra_config key {k!r} "
                    f"(known: {', '.join(sorted(known))})"
                )
            t = known[k].type
            try:
                if t in ("int", int):
                    v = int(v)
                elif t in ("float", float):
                    v = float(v)
                elif t in ("bool", bool):
                    v = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
                else:
                    v = str(v)
            except (TypeError, ValueError) as e:
                raise UnsafeConfigError(f"KVStash connector: bad value for {k}: {v!r}") from e
            kw[k] = v
        if kw.get("handoff_land_tier", "cpu") not in HANDOFF_LAND_TIERS:
            raise UnsafeConfigError(
                f"KVStash connector: bad value for handoff_land_tier: {kw['handoff_land_tier']!r} "
                f"(one of {', '.join(HANDOFF_LAND_TIERS)})"
            )
        if "target" not in kw and os.environ.get("KVSTASH_TARGET"):
            kw["target"] = os.environ["KVSTASH_TARGET"]
        return cls(**kw)


def fetch_handoff(client: Any, handoff: Any, cfg: ConnectorConfig) -> Any:
    """The kv_consumer's FetchHandoff of `handoff` (a kvstash.Handoff) on its own node through
    `client` (a kvstash.Client), landing where ``cfg.handoff_land_tier`` says. Raises the
    client's errors (kvstash.errors), e.g. FailedPrecondition for "gpu" on a node without a GPU
    pool; the caller treats any error as a miss and recomputes."""
    return client.fetch_handoff(handoff, land_tier=cfg.handoff_land_tier)


@dataclasses.dataclass
class ModelIdentity:
    """Everything that decides what a block's KV bytes are, besides the block hash."""

    model_id: str
    weights_revision: str
    tokenizer: str
    dtype_code: int
    num_layers: int
    total_kv_heads: int
    head_dim: int
    block_size: int
    hash_algo: str
    rope: int = ROPE_NEOX
    rope_theta: float = 10000.0
    engine: str = ""  # vLLM version and attention backend

    def revision_string(self) -> str:
        return (
            f"{self.weights_revision}|tokenizer={self.tokenizer}|block={self.block_size}"
            f"|hash={self.hash_algo}|engine={self.engine}"
        )

    def heads_of_rank(self, rank: int, tp_size: int) -> Tuple[int, int]:
        """The KV head range rank `rank` of `tp_size` holds (vLLM splits heads evenly; with
        fewer KV heads than ranks each head is replicated, and rank r holds head r*H/tp)."""
        h = self.total_kv_heads
        if tp_size <= h:
            per = h // tp_size
            return rank * per, (rank + 1) * per
        head = rank * h // tp_size
        return head, head + 1


def _lp(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def hash_files(paths: Sequence[str]) -> str:
    """sha256 over the names, sizes and bytes of `paths` (a local model's identity)."""
    d = hashlib.sha256()
    for p in sorted(paths):
        d.update(_lp(os.path.basename(p)))
        d.update(struct.pack("<Q", os.path.getsize(p)))
        with open(p, "rb") as fh:
            while True:
                chunk = fh.read(8 << 20)
                if not chunk:
                    break
                d.update(chunk)
    return d.hexdigest()


def local_dir_revision(path: str, patterns: Sequence[str]) -> Optional[str]:
    """'sha256:<hex>' over the files of a local directory whose names end with one of
    `patterns`; None when `path` is not a directory or holds none of them."""
    if not os.path.isdir(path):
        return None
    files = [
        os.path.join(path, f)
        for f in os.listdir(path)
        if any(f.endswith(p) for p in patterns) and os.path.isfile(os.path.join(path, f))
    ]
    if not files:
        return None
    return "sha256:" + hash_files(files)


# ---------------------------------------------------------------------------------------------
# Circuit breaker


class CircuitBreaker:
    """Keeps an unreachable cachesvc from costing a deadline per request.

    Closed: every call goes through. A failure opens it: calls are refused (``allow()`` is
    False, costing nothing) until the backoff has passed; then exactly one caller is let through
    as a probe (half-open). The probe's success closes the breaker; its failure reopens it with
    the backoff doubled (up to `max_backoff_s`). Thread-safe. `clock` is injectable for tests.
    """

    def __init__(self, backoff_s: float, max_backoff_s: float, clock=time.monotonic):
        self._base = backoff_s
        self._max = max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        self._probing = False
        self._backoff = backoff_s
        self._retry_at = 0.0
        self.opened = 0  # times it opened
        self.skipped = 0  # calls refused while open

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open

    def allow(self) -> bool:
        with self._lock:
            if not self._open:
                return True
            if not self._probing and self._clock() >= self._retry_at:
                self._probing = True
                return True
            self.skipped += 1
            return False

    def success(self) -> None:
        with self._lock:
            self._open = False
            self._probing = False
            self._backoff = self._base

    def failure(self) -> None:
        with self._lock:
            if self._open and self._probing:
                self._backoff = min(self._backoff * 2, self._max)
            elif not self._open:
                self.opened += 1
                self._backoff = self._base
            self._open = True
            self._probing = False
            self._retry_at = self._clock() + self._backoff


# ---------------------------------------------------------------------------------------------
# Counters


class Counters:
    """Named monotonically increasing counters, written as JSON to `path` (atomically) by
    `flush()` when they changed. Thread-safe."""

    def __init__(self, path: str = ""):
        self._path = path
        self._lock = threading.Lock()
        self._values: Dict[str, int] = {}
        self._dirty = False

    def add(self, name: str, n: int = 1) -> None:
        if n == 0:
            return
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n
            self._dirty = True

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._values)

    def flush(self) -> None:
        if not self._path:
            return
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps(self._values, sort_keys=True)
            self._dirty = False
        tmp = f"{self._path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as fh:
                fh.write(data)
            os.replace(tmp, self._path)
        except OSError:
            pass  # diagnostics only; never fail the engine over them


# ---------------------------------------------------------------------------------------------
# Scheduler-side plan of what each block is


def loadable_blocks(num_prompt_tokens: int, block_size: int, num_hashes: int) -> int:
    """Full prompt blocks a load may cover: the last prompt token is always computed (vLLM
    needs its logits), so at most floor((n-1)/block_size) blocks, and never more blocks than
    vLLM has hashes for."""
    if num_prompt_tokens <= 1:
        return 0
    return min((num_prompt_tokens - 1) // block_size, num_hashes)


def storable_blocks(num_computed: int, block_size: int, num_hashes: int) -> int:
    """Full blocks whose KV is in paged memory once `num_computed` tokens are, prompt and
    generated tokens alike (what vLLM's own prefix cache keeps, so a conversation's next turn
    restores the same blocks either way). A partial last block is never stored: its name would
    change as the sequence grows."""
    return min(num_computed // block_size, num_hashes)


# ---------------------------------------------------------------------------------------------
# Layout: vLLM CPU paged blocks <-> canonical objects


def _head_bytes(kv: Any) -> int:
    return kv.shape[3] // 2 * kv.element_size()


def gather_blocks(layers: List[Any], block_ids: Sequence[int], out: Any) -> None:
    """Copies blocks `block_ids` of every layer into `out`, canonical layout (in C++,
    kvstash._native.copy_paged_blocks, without the GIL).

    layers: per model layer, the contiguous CPU paged tensor [num_blocks, H, block_size, 2*D]
      whose block interior is [H][K rows of all tokens, then V rows] (vLLM CPU attention, LBHNC).
    out: contiguous tensor [len(block_ids), L, 2, block_size, H, D] of the same dtype (one object
      per block, each [layer][K|V][token][head][dim]), or a list of one contiguous buffer per
      block of that object's size.
    """
    from kvstash import _native

    _, h, bs, _ = layers[0].shape
    _native.copy_paged_blocks(list(layers), list(range(len(layers))), list(block_ids), out,
                              num_layers=len(layers), heads=h, block_size=bs,
                              head_bytes=_head_bytes(layers[0]), to_objects=True)


def scatter_layer(kv: Any, layer: int, block_ids: Sequence[int], src: Any,
                  num_layers: Optional[int] = None) -> None:
    """Inverse of gather_blocks for one layer: layer `layer` of the objects `src` into the paged
    tensor's blocks `block_ids`. src: a contiguous tensor [n, L, 2, bs, H, D], or a list of n
    buffers of one object each (e.g. read leases; then `num_layers` is required)."""
    from kvstash import _native

    _, h, bs, _ = kv.shape
    if num_layers is None:
        num_layers = src.shape[1]
    _native.copy_paged_blocks([kv], [layer], list(block_ids), src, num_layers=num_layers,
                              heads=h, block_size=bs, head_bytes=_head_bytes(kv),
                              to_objects=False)


def gather_blocks_torch(layers: List[Any], block_ids: Sequence[int], out: Any) -> None:
    """gather_blocks in torch ops (the reference the native copy is tested against)."""
    import torch

    idx = torch.as_tensor(list(block_ids), dtype=torch.long)
    for l, kv in enumerate(layers):
        nb, h, bs, d2 = kv.shape
        v = kv.view(nb, h, 2, bs, d2 // 2)
        out[:, l].copy_(v.index_select(0, idx).permute(0, 2, 3, 1, 4))


def scatter_layer_torch(kv: Any, layer: int, block_ids: Sequence[int], src: Any) -> None:
    """scatter_layer in torch ops (reference)."""
    import torch

    idx = torch.as_tensor(list(block_ids), dtype=torch.long)
    nb, h, bs, d2 = kv.shape
    v = kv.view(nb, h, 2, bs, d2 // 2)
    v.index_copy_(0, idx, src[:, layer].permute(0, 3, 1, 2, 4))
