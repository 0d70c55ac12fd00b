"""kvstash: Python client of the KVStash cache service (docs/python.md).

Connect to a cachesvc, build object names with the same key scheme as the C++ code
(docs/hashing.md), and move KV bytes between your buffers (numpy arrays, CPU torch tensors,
bytearrays, raw ``(address, nbytes)`` ranges) and the service's shared-memory arena::

    import kvstash, numpy as np
    client = kvstash.Client("unix:///tmp/kvstash.sock")
    spec = kvstash.ModelSpec(model_id="m", num_layers=2, total_kv_heads=4, head_dim=64)
    names = kvstash.names_for_tokens("tenant", spec, tokens, chunk_tokens=256)
    layout = kvstash.KvLayout(num_layers=2, total_kv_heads=4, head_dim=64, num_tokens=256)
    client.put_many(names, layout, buffers)
    client.get_many(names, out_buffers)

Errors are raised as :mod:`kvstash.errors` exceptions carrying the gRPC status code.
"""

from __future__ import annotations

import pkgutil as _pkgutil

# The native extension is built by CMake into <build>/python/kvstash/ while this file stays in
# the source tree; extend_path joins every kvstash/ directory on sys.path into this package.
__path__ = _pkgutil.extend_path(__path__, __name__)  # type: ignore[name-defined]

from . import errors  # noqa: E402  (errors first: the extension raises its classes)

try:
    from . import _native  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "kvstash: the native extension kvstash._native is not importable. Build it "
        "(cmake --build build/release --target kvstash_python) and put <build>/python on "
        "sys.path next to <checkout>/python (docs/python.md). Cause: " + str(exc)
    ) from exc

from ._native import (  # noqa: E402
    Client,
    DType,
    Encoding,
    GetResult,
    Handoff,
    HandoffFetch,
    KeyPresence,
    KvLayout,
    Lease,
    LookupReply,
    ModelSpec,
    ObjectInfo,
    ObjectName,
    Reservation,
    RopeConvention,
    Tier,
    TokenHashMode,
    chain_token_hash,
    chunk_token_hashes,
    chunk_variant_hash,
    independent_token_hash,
    object_key,
)
from .errors import KvStashError  # noqa: E402
from .keys import names_for_hashes, names_for_tokens  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Client",
    "DType",
    "Encoding",
    "GetResult",
    "Handoff",
    "HandoffFetch",
    "KeyPresence",
    "KvLayout",
    "KvStashError",
    "Lease",
    "LookupReply",
    "ModelSpec",
    "ObjectInfo",
    "ObjectName",
    "Reservation",
    "RopeConvention",
    "Tier",
    "TokenHashMode",
    "chain_token_hash",
    "chunk_token_hashes",
    "chunk_variant_hash",
    "errors",
    "independent_token_hash",
    "names_for_hashes",
    "names_for_tokens",
    "object_key",
]
