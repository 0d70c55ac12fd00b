import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from kvstash_testing import Service  # noqa: E402


@pytest.fixture(scope="module")
def service():
    """A cachesvc on a unix socket (shared-memory arena), one per test module."""
    svc = Service()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(service):
    import kvstash

    c = kvstash.Client(service.target)
    assert c.shared_memory_attached, c.shared_memory_error
    yield c
    c.close()
