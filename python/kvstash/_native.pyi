"""Type stubs of kvstash._native (python/src/*.cc). Docstrings live in the extension."""

from __future__ import annotations

import enum
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from .errors import KvStashError

# A buffer: numpy array / bytearray / memoryview (C-contiguous), a contiguous CPU torch.Tensor,
# or an (address, nbytes) tuple of memory the caller keeps alive.
Buffer = Any
Hash = Union[bytes, bytearray, memoryview, str]  # 16 bytes or 32 hex digits
Tokens = Union[Sequence[int], Iterable[int], Any]  # any sequence of u32, or a numpy array

class DType(enum.IntEnum):
    F16: int
    BF16: int
    F32: int

class RopeConvention(enum.IntEnum):
    NONE: int
    NEOX: int
    GPTJ: int

class Encoding(enum.IntEnum):
    RAW: int
    CACHEGEN: int

class Tier(enum.IntEnum):
    UNKNOWN: int
    GPU: int
    CPU: int
    SSD: int
    REMOTE: int

class TokenHashMode(enum.IntEnum):
    PREFIX_CHAINED: int
    POSITION_INDEPENDENT: int

class KvLayout:
    num_layers: int
    layer_begin: int
    total_kv_heads: int
    head_begin: int
    head_end: int
    head_dim: int
    dtype: DType
    num_tokens: int
    rope: RopeConvention
    rope_theta: float
    rotary_dim: int
    position_start: int
    def __init__(
        self,
        *,
        num_layers: int,
        total_kv_heads: int,
        head_dim: int,
        num_tokens: int,
        dtype: DType = ...,
        layer_begin: int = 0,
        head_begin: Optional[int] = None,
        head_end: Optional[int] = None,
        rope: RopeConvention = ...,
        rope_theta: float = 10000.0,
        rotary_dim: int = 0,
        position_start: int = 0,
    ) -> None: ...
    def raw_bytes(self) -> int: ...
    def validate(self) -> None: ...

class ObjectInfo:
    layout: KvLayout
    encoding: Encoding
    encoding_level: int
    payload_bytes: int
    payload_crc32c: int
    lossy: bool
    def __init__(self, layout: KvLayout) -> None: ...

Info = Union[ObjectInfo, KvLayout]

class ModelSpec:
    model_id: str
    weights_revision: str
    dtype: DType
    num_layers: int
    layer_begin: int
    layer_end: int
    total_kv_heads: int
    head_begin: int
    head_end: int
    head_dim: int
    rope: RopeConvention
    rope_theta: float
    def __init__(
        self,
        *,
        model_id: str,
        weights_revision: str = "",
        dtype: DType = ...,
        num_layers: int,
        total_kv_heads: int,
        head_dim: int,
        layer_begin: Optional[int] = None,
        layer_end: Optional[int] = None,
        head_begin: Optional[int] = None,
        head_end: Optional[int] = None,
        rope: RopeConvention = ...,
        rope_theta: float = 0.0,
    ) -> None: ...
    def fingerprint(self) -> bytes: ...

def chain_token_hash(parent: Optional[Hash], tokens: Tokens) -> bytes: ...
def independent_token_hash(tokens: Tokens) -> bytes: ...
def chunk_variant_hash(chunk_hash: Hash, slot: int, part: int) -> bytes: ...
def chunk_token_hashes(
    tokens: Tokens,
    chunk_tokens: int = 256,
    mode: TokenHashMode = ...,
    include_partial: bool = False,
) -> List[bytes]: ...
def object_key(namespace: str, model_fingerprint: Hash, token_hash: Hash) -> bytes: ...

class ObjectName:
    def __init__(self, namespace: str, model_fingerprint: Hash, token_hash: Hash) -> None: ...
    @property
    def namespace(self) -> str: ...
    @property
    def model_fingerprint(self) -> bytes: ...
    @property
    def token_hash(self) -> bytes: ...
    @property
    def storage_key(self) -> bytes: ...

class KeyPresence:
    present: bool
    tier: Tier
    payload_bytes: int
    info: ObjectInfo
    def __bool__(self) -> bool: ...

class LookupReply:
    results: List[KeyPresence]
    longest_prefix: int

class Handoff:
    node: str
    id: int
    names: List[ObjectName]
    payload_bytes: List[int]
    expires_in_ms: int
    def serialize(self) -> bytes: ...
    @staticmethod
    def parse(data: bytes) -> Handoff: ...

class HandoffFetch:
    errors: List[Optional[KvStashError]]
    fetched: int
    already_local: int
    longest_prefix: int
    fetched_bytes: int

class GetResult:
    error: Optional[KvStashError]
    info: ObjectInfo
    served_from: Tier
    ok: bool
    def __bool__(self) -> bool: ...

class Lease:
    info: ObjectInfo
    served_from: Tier
    lease_id: int
    released: bool
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...
    def release(self) -> None: ...
    def __enter__(self) -> Lease: ...
    def __exit__(self, *exc: Any) -> None: ...

class Reservation:
    info: ObjectInfo
    reservation_id: int
    done: bool
    def __buffer__(self, flags: int) -> memoryview: ...
    def commit(self, durable: bool = False) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Reservation: ...
    def __exit__(self, *exc: Any) -> None: ...

class Client:
    def __init__(
        self,
        target: str,
        *,
        rpc_timeout_s: float = 10.0,
        stream_timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        use_shared_memory: bool = True,
        verify_reads: bool = False,
        lease_ms: int = 0,
        prefault_arena: bool = True,
        local_control: bool = True,
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        tls_server_name: str = "",
        token: str = "",
        attach_read_only: bool = False,
    ) -> None: ...
    @property
    def target(self) -> str: ...
    @property
    def shared_memory_attached(self) -> bool: ...
    @property
    def shared_memory_writable(self) -> bool: ...
    @property
    def shared_memory_error(self) -> Optional[KvStashError]: ...
    @property
    def local_control_active(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(self, *exc: Any) -> None: ...
    def lookup(self, names: Sequence[ObjectName]) -> LookupReply: ...
    def put(
        self, name: ObjectName, info: Info, buffer: Buffer, *, overwrite: bool = False,
        durable: bool = False
    ) -> None: ...
    def put_many(
        self,
        names: Sequence[ObjectName],
        infos: Union[Info, Sequence[Info]],
        buffers: Sequence[Buffer],
        *,
        overwrite: bool = False,
        durable: bool = False,
        max_batch: int = 8,
        max_batch_bytes: int = 64 << 20,
    ) -> List[Optional[KvStashError]]: ...
    def get_many(self, names: Sequence[ObjectName], buffers: Sequence[Buffer]) -> List[GetResult]: ...
    def get_into(self, name: ObjectName, buffer: Buffer) -> ObjectInfo: ...
    def get(self, name: ObjectName) -> bytearray: ...
    def acquire(self, name: ObjectName) -> Lease: ...
    def acquire_many(self, names: Sequence[ObjectName]) -> List[Union[Lease, KvStashError]]: ...
    def reserve(self, name: ObjectName, info: Info, *, overwrite: bool = False) -> Reservation: ...
    def delete(self, names: Sequence[ObjectName]) -> List[Optional[KvStashError]]: ...
    def pin(self, names: Sequence[ObjectName]) -> List[Optional[KvStashError]]: ...
    def unpin(self, names: Sequence[ObjectName]) -> List[Optional[KvStashError]]: ...
    def stats(self) -> dict: ...
    def offer(self, names: Sequence[ObjectName], handoff_ms: int = 0) -> Handoff: ...
    def fetch_handoff(
        self, handoff: Handoff, all_or_nothing: bool = False, land_tier: Union[Tier, str] = "cpu"
    ) -> HandoffFetch: ...
    def heartbeat_handoff(self, handoff: Handoff, extend_ms: int = 0) -> int: ...
    def release_handoff(self, handoff: Handoff) -> None: ...

def copy_paged_blocks(
    paged: Sequence[Buffer],
    layer_ids: Sequence[int],
    block_ids: Sequence[int],
    objects: Union[Buffer, Sequence[Buffer]],
    *,
    num_layers: int,
    heads: int,
    block_size: int,
    head_bytes: int,
    to_objects: bool,
) -> None:
    """Copies blocks between paged per-layer KV tensors ([num_blocks][heads][K|V][block_size]
    [head_bytes]) and canonical objects ([num_layers][K|V][block_size][heads][head_bytes]), in
    C++ without the GIL (kvstash.vllm_support.gather_blocks / scatter_layer)."""
    ...
