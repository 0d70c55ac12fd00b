"""kvstash.Client against a cachesvc with mutual TLS and tenants (bearer tokens, certificates).

The PKI is made at test time by scripts/make_test_certs.sh (openssl); no key is committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import kvstash
from kvstash import errors
from kvstash_testing import Service

ALPHA_TOKEN = "py-alpha-token-0123456789"
BETA_TOKEN = "py-beta-token-0123456789"
FP = kvstash.ModelSpec(model_id="py-sec", num_layers=2, total_kv_heads=2, head_dim=16).fingerprint()
LAYOUT = kvstash.KvLayout(num_layers=2, total_kv_heads=2, head_dim=16, num_tokens=32)
SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "make_test_certs.sh")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = str(tmp_path_factory.mktemp("pki"))
    subprocess.run(["bash", SCRIPT, d], check=True, timeout=120)
    return d


@pytest.fixture(scope="module")
def service(pki, tmp_path_factory):
    tokens = os.path.join(str(tmp_path_factory.mktemp("tenants")), "tokens.txt")
    with open(tokens, "w") as f:
        f.write(f"token {ALPHA_TOKEN} alpha\ntoken {BETA_TOKEN} beta\ncert tenant-b beta\n")
    svc = Service(
        tcp=True,
        extra_args=[
            "--tls-cert", os.path.join(pki, "server.pem"),
            "--tls-key", os.path.join(pki, "server.key"),
            "--tls-ca", os.path.join(pki, "ca.pem"),
            "--tokens-file", tokens,
        ],
    )  # fmt: skip
    yield svc
    svc.stop()


def connect(service, pki, cert="client-node", **kw):
    tls = {"tls_ca": os.path.join(pki, "ca.pem")}
    if cert:
        tls["tls_cert"] = os.path.join(pki, cert + ".pem")
        tls["tls_key"] = os.path.join(pki, cert + ".key")
    return kvstash.Client(service.target, connect_timeout_s=5.0, rpc_timeout_s=10.0, **tls, **kw)


def name(i: int, ns: str = ""):
    return kvstash.ObjectName(ns, FP, kvstash.independent_token_hash([7000 + i]))


def data(seed: int):
    return np.random.default_rng(seed).integers(0, 256, LAYOUT.raw_bytes(), dtype=np.uint8)


def test_token_over_mutual_tls_round_trip_and_tenant_scope(service, pki):
    with connect(service, pki, token=ALPHA_TOKEN) as alpha, connect(
        service, pki, token=BETA_TOKEN
    ) as beta:
        payload = data(1)
        alpha.put(name(1), LAYOUT, payload)
        assert bytes(alpha.get(name(1))) == payload.tobytes()
        assert bytes(alpha.get(name(1, "alpha"))) == payload.tobytes()
        # The empty namespace is beta's own there; alpha's is refused.
        with pytest.raises(errors.NotFound):
            beta.get(name(1))
        with pytest.raises(errors.PermissionDenied):
            beta.get(name(1, "alpha"))


def test_client_certificate_names_the_tenant(service, pki):
    with connect(service, pki, cert="client-tenant-b") as beta:
        payload = data(2)
        beta.put(name(2), LAYOUT, payload)
        assert bytes(beta.get(name(2, "beta"))) == payload.tobytes()


def test_missing_or_unknown_token_is_unauthenticated(service, pki):
    with connect(service, pki) as nobody:  # a certificate that names no tenant, no token
        with pytest.raises(errors.Unauthenticated):
            nobody.lookup([name(3)])
    with connect(service, pki, token="not-a-token-0123456789") as stranger:
        with pytest.raises(errors.Unauthenticated):
            stranger.lookup([name(3)])


def test_tls_is_required(service, pki):
    # No client certificate: the mutual-TLS handshake fails; no TLS at all: nothing answers.
    with pytest.raises(errors.Unavailable):
        connect(service, pki, cert="", token=ALPHA_TOKEN)
    with pytest.raises(errors.Unavailable):
        kvstash.Client(service.target, connect_timeout_s=2.0, token=ALPHA_TOKEN)


def test_handoff_is_the_offering_tenants(service, pki):
    with connect(service, pki, token=ALPHA_TOKEN) as alpha, connect(
        service, pki, token=BETA_TOKEN
    ) as beta:
        alpha.put(name(4), LAYOUT, data(4))
        handoff = alpha.offer([name(4)])
        with pytest.raises(errors.PermissionDenied):
            beta.heartbeat_handoff(handoff)
        with pytest.raises(errors.PermissionDenied):
            beta.release_handoff(handoff)
        assert alpha.heartbeat_handoff(handoff, 5000) > 0
        alpha.release_handoff(handoff)


READER_TOKEN = "py-alpha-reader-token-0123456789"


@pytest.fixture(scope="module")
def local_service(tmp_path_factory):
    """A multi-tenant cachesvc on a unix socket: alpha has an arena of its own (a cpu quota)."""
    tokens = os.path.join(str(tmp_path_factory.mktemp("local-tenants")), "tokens.txt")
    with open(tokens, "w") as f:
        f.write(
            f"token {ALPHA_TOKEN} alpha\ntoken {READER_TOKEN} alpha ro\nquota alpha cpu=4MiB\n"
        )
    svc = Service(extra_args=["--tokens-file", tokens])
    yield svc
    svc.stop()


def test_read_only_attach_with_a_read_only_token(local_service):
    target = local_service.target
    payload = data(5)
    with kvstash.Client(target, token=ALPHA_TOKEN) as alpha:
        assert alpha.shared_memory_writable
        alpha.put(name(5), LAYOUT, payload)
    # A writable attach with a read-only token is refused: no mapping, and why.
    with kvstash.Client(target, token=READER_TOKEN) as plain:
        assert not plain.shared_memory_attached
        assert isinstance(plain.shared_memory_error, errors.PermissionDenied)
        assert bytes(plain.get(name(5))) == payload.tobytes()  # over the byte stream
    with kvstash.Client(target, token=READER_TOKEN, attach_read_only=True) as reader:
        assert reader.shared_memory_attached
        assert not reader.shared_memory_writable
        assert reader.local_control_active
        with reader.acquire(name(5)) as lease:  # read in place through the read-only mapping
            assert bytes(memoryview(lease)) == payload.tobytes()
        with pytest.raises(errors.FailedPrecondition):
            reader.reserve(name(6), LAYOUT)  # the client's mapping is read-only
        with pytest.raises(errors.PermissionDenied):
            reader.put(name(6), LAYOUT, data(6))  # over the byte stream: the service refuses
        with pytest.raises(errors.PermissionDenied):
            reader.delete([name(5)])
    with kvstash.Client(target, token=ALPHA_TOKEN, attach_read_only=True) as alpha_ro:
        assert alpha_ro.shared_memory_attached and not alpha_ro.shared_memory_writable
        alpha_ro.put(name(7), LAYOUT, data(7))  # a writer still puts, over the byte stream
        assert bytes(alpha_ro.get(name(7))) == data(7).tobytes()
