"""Test harness for the kvstash Python package: starts real cachesvc processes.

The cachesvc binary comes from the build tree ctest runs in (KVSTASH_BINARY_DIR, set by
kvstash_add_pytest). Every wait is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

PEER_SECRET = "python-tests-cluster-secret-0123456789"


def binary_dir() -> str:
    d = os.environ.get("KVSTASH_BINARY_DIR")
    if not d:
        raise RuntimeError("KVSTASH_BINARY_DIR is not set (run through ctest)")
    return d


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One cachesvc child process in its own temporary directory."""

    def __init__(
        self,
        tcp: bool = False,
        cpu_capacity: str = "64MiB",
        ssd_capacity: str = "256MiB",
        extra_args: Optional[List[str]] = None,
        peer_secret: bool = False,
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="kvst-py-")
        self.unix_socket = os.path.join(self.dir, "svc.sock")
        ready = os.path.join(self.dir, "ready.json")
        self.metrics_port = free_tcp_port()
        argv = [
            os.path.join(binary_dir(), "cachesvc", "cachesvc"),
            "--listen", "127.0.0.1:0" if tcp else "unix://" + self.unix_socket,
            "--data-dir", os.path.join(self.dir, "data"),
            "--ready-file", ready,
            "--cpu-capacity", cpu_capacity,
            "--ssd-capacity", ssd_capacity,
            "--metrics-address", "127.0.0.1",
            "--metrics-port", str(self.metrics_port),
            "--arena-socket", os.path.join(self.dir, "arena.sock"),
            "--log-level", "info",
        ]  # fmt: skip
        if peer_secret:
            secret = os.path.join(self.dir, "secret")
            with open(secret, "w") as f:
                f.write(PEER_SECRET + "\n")
            argv += ["--peer-secret-file", secret, "--peer-data-plane", "grpc"]
        argv += extra_args or []
        self.log_path = os.path.join(self.dir, "cachesvc.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60  # sanitizer or busy machines start slowly
        self.target = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cachesvc exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with open(ready) as f:
                    info = json.load(f)
                self.target = info["target"]
                return
            except (OSError, ValueError, KeyError):
                time.sleep(0.01)
        self.stop()
        raise RuntimeError("cachesvc not ready within 60 s:\n" + self.log())

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
