"""Object names from tokens or from an engine's own block hashes (docs/python.md "Keys").

Tokens go through the C++ key scheme (docs/hashing.md): prefix-chained XXH3-128 over u32
little-endian tokens, so a name computed here equals the one the C++ connector computes for the
same namespace, model and tokens.

Engines that already hash their blocks (SGLang's HiCache page hashes, vLLM's block hashes) map
each of their hashes onto a KVStash token hash with :func:`engine_token_hash`, which is
``H("KVS1IND\\0" || u32 words of the domain-tagged engine hash)`` through the same XXH3-128 code,
so equal engine hashes give equal KVStash names in every process.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Union

from ._native import (
    ModelSpec,
    ObjectName,
    TokenHashMode,
    chunk_token_hashes,
    independent_token_hash,
)

Tokens = Union[Sequence[int], "numpy.ndarray"]  # noqa: F821


def names_for_tokens(
    namespace: str,
    spec_or_fingerprint: Union[ModelSpec, bytes],
    tokens: Tokens,
    chunk_tokens: int = 256,
    include_partial: bool = False,
) -> List[ObjectName]:
    """Names of the prefix-chained chunks of ``tokens`` (one per full chunk, in order)."""
    fp = (
        spec_or_fingerprint.fingerprint()
        if isinstance(spec_or_fingerprint, ModelSpec)
        else bytes(spec_or_fingerprint)
    )
    hashes = chunk_token_hashes(
        tokens, chunk_tokens, TokenHashMode.PREFIX_CHAINED, include_partial
    )
    return [ObjectName(namespace, fp, h) for h in hashes]


def engine_token_hash(engine_hash: Union[str, bytes]) -> bytes:
    """A KVStash token hash for an engine's own block hash (a hex string or raw bytes).

    The engine hash's UTF-8 (for str) or raw bytes are prefixed by the tag ``b"ENG1"`` and
    padded with zero bytes to a multiple of 4, read as u32 little-endian words and hashed with
    the position-independent token hash. The engine hash must already commit to the prefix
    (SGLang's and vLLM's page hashes do).
    """
    raw = engine_hash.encode() if isinstance(engine_hash, str) else bytes(engine_hash)
    raw = b"ENG1" + len(raw).to_bytes(4, "little") + raw
    raw += b"\0" * (-len(raw) % 4)
    words = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]
    return independent_token_hash(words)


def names_for_hashes(
    namespace: str,
    spec_or_fingerprint: Union[ModelSpec, bytes],
    engine_hashes: Iterable[Union[str, bytes]],
) -> List[ObjectName]:
    """Names for a sequence of engine block hashes (see :func:`engine_token_hash`)."""
    fp = (
        spec_or_fingerprint.fingerprint()
        if isinstance(spec_or_fingerprint, ModelSpec)
        else bytes(spec_or_fingerprint)
    )
    return [ObjectName(namespace, fp, engine_token_hash(h)) for h in engine_hashes]
