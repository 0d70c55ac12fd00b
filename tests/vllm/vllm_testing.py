"""Harness of the vLLM end-to-end tests: a cachesvc that can be restarted on the same SSD
directory, and vLLM engines run as fresh processes (vllm_runner.py). Every wait is bounded."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE_TIMEOUT_S = 900  # one engine process, start-up included, on a busy 2-core machine


def model_dir() -> str:
    cache = os.environ.get("KVSTASH_MODEL_CACHE") or os.path.expanduser("~/.cache/kvstash")
    d = os.path.join(cache, "models", "SmolLM2-135M-Instruct-hf")
    if not os.path.exists(os.path.join(d, "config.json")):
        pytest.skip(f"{d} missing: run scripts/setup_vllm.sh and scripts/convert_smollm2_hf.py")
    return d


TINY_TP_MODEL = "tiny-llama-4h2kv-random-v1"


def tiny_tp_model_dir() -> str:
    """A 4-layer Llama with random weights (torch seed 0; 4 attention and 2 KV heads of 64, so
    vLLM accepts TP=2, which SmolLM2-135M's 9 heads and 3 KV heads refuse) and SmolLM2's
    tokenizer, made by transformers from a config (no download) once and cached beside the
    converted SmolLM2 (about 30 MB)."""
    src = model_dir()
    d = os.path.join(os.path.dirname(src), TINY_TP_MODEL)
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return d
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.05,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    tmp = d + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), tmp)
    try:
        os.rename(tmp, d)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def binary_dir() -> str:
    d = os.environ.get("KVSTASH_BINARY_DIR")
    if not d:
        pytest.skip("KVSTASH_BINARY_DIR is not set (run through ctest)")
    return d


def prompt_tokens(n: int, offset: int = 0, corpus: str = "botchan.txt") -> List[int]:
    """n token ids of a shared text corpus (the model's own tokenizer)."""
    return list(_corpus_tokens(corpus)[offset:offset + n])


@functools.lru_cache(maxsize=None)
def _corpus_tokens(corpus: str) -> tuple:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir())
    shared = os.environ.get("KVSTASH_SHARED_DATA", "")
    with open(os.path.join(shared, "text", corpus), errors="replace") as fh:
        return tuple(tok.encode(fh.read()))


class CacheService:
    """cachesvc on a unix socket (shared-memory arena) with CPU and SSD tiers; restart() keeps
    the SSD directory, so objects survive as SSD-tier copies."""

    def __init__(self, cpu_capacity: str = "512MiB", ssd_capacity: str = "1GiB",
                 listen: str = "", netns: str = "", extra_args: Optional[List[str]] = None):
        self.dir = tempfile.mkdtemp(prefix="kvst-vllm-")
        self.target = listen or "unix://" + os.path.join(self.dir, "svc.sock")
        self.cpu_capacity = cpu_capacity
        self.ssd_capacity = ssd_capacity
        self.netns = netns
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        ready = os.path.join(self.dir, "ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        argv = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv += [os.path.join(binary_dir(), "cachesvc", "cachesvc"),
                "--listen", self.target,
                "--arena-socket", os.path.join(self.dir, "arena.sock"),
                "--data-dir", os.path.join(self.dir, "data"),
                "--ready-file", ready,
                "--cpu-capacity", self.cpu_capacity,
                "--ssd-capacity", self.ssd_capacity,
                "--metrics-port", "0",
                "--log-level", "info"] + self.extra_args  # fmt: skip
        log = open(os.path.join(self.dir, "cachesvc.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cachesvc exited with {self.proc.returncode}")
            if os.path.exists(ready):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("cachesvc not ready within 60 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self) -> None:
        """Graceful stop (SIGTERM): the SSD tier's index is written."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.terminate()
        self.start()

    def ssd_files(self) -> List[str]:
        root = os.path.join(self.dir, "data")
        out = []
        for d, _, files in os.walk(root):
            out += [os.path.join(d, f) for f in files if f.endswith(".kvo")]
        return sorted(out)

    def stats(self) -> Dict[str, Any]:
        import kvstash

        with kvstash.Client(self.target, rpc_timeout_s=10.0) as c:
            return c.stats()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def connector(svc: CacheService, stats_path: str, role: str = "kv_both",
              **extra: Any) -> Dict[str, Any]:
    cfg = {"target": svc.target, "stats_path": stats_path}
    cfg.update(extra)
    return {"kv_role": role, "extra_config": cfg}


def run_engine(spec: Dict[str, Any], env: Optional[Dict[str, str]] = None,
               timeout_s: float = ENGINE_TIMEOUT_S, netns: str = "") -> Dict[str, Any]:
    """Runs vllm_runner.py as a fresh process; its JSON result."""
    spec = dict(spec)
    spec.setdefault("model", model_dir())
    work = tempfile.mkdtemp(prefix="kvst-vllm-run-")
    spec_path = os.path.join(work, "spec.json")
    out_path = os.path.join(work, "out.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # The same OpenMP threads for every engine: vLLM CPU reserves one core for its engine core
    # process, and one more when a kv_transfer_config is set (meant for NIXL), so on a 2-core
    # machine an engine with the connector gets 2 threads and one without it 1 thread; bf16
    # results differ with the thread count, enough to flip greedy tokens (docs/connector.md
    # "Which tokens to expect"). Every engine reserves one core.
    e.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    log_path = os.path.join(work, "engine.log")
    with open(log_path, "wb") as log:
        argv = ["ip", "netns", "exec", netns] if netns else []
        argv += [sys.executable, os.path.join(HERE, "vllm_runner.py"), spec_path, out_path]
        p = subprocess.Popen(argv, stdout=log, stderr=log, env=e, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
            rc = None
    with open(log_path, errors="replace") as fh:
        log_text = fh.read()
    # vLLM's engine core and worker are children; never leave them behind.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if rc != 0 or not os.path.exists(out_path):
        tail = "\n".join(log_text.splitlines()[-60:])
        raise AssertionError(f"engine run failed (rc={rc}):\n{tail}")
    with open(out_path) as fh:
        result = json.load(fh)
    result["log"] = log_text
    shutil.rmtree(work, ignore_errors=True)
    return result


def assert_no_engine_exception(result: Dict[str, Any]) -> None:
    bad = [l for l in result["log"].splitlines()
           if "Traceback" in l or "EngineDeadError" in l or "KVStash: loader failed" in l]
    assert not bad, "\n".join(bad[:20])


class NetnsPair:
    """Two network namespaces joined by a veth pair with private addresses (10.213.7.1 and
    .2/30), loopback up in each. Skips the test when namespaces cannot be made here."""

    def __init__(self, tag: str):
        self.a, self.b = f"kvst-{tag}a-{os.getpid()}", f"kvst-{tag}b-{os.getpid()}"
        self.addr_a, self.addr_b = "10.213.7.1", "10.213.7.2"
        va, vb = f"kv{os.getpid() % 100000}a", f"kv{os.getpid() % 100000}b"
        cmds = [
            ["ip", "netns", "add", self.a], ["ip", "netns", "add", self.b],
            ["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
            ["ip", "link", "set", va, "netns", self.a], ["ip", "link", "set", vb, "netns", self.b],
            ["ip", "-n", self.a, "addr", "add", self.addr_a + "/30", "dev", va],
            ["ip", "-n", self.b, "addr", "add", self.addr_b + "/30", "dev", vb],
            ["ip", "-n", self.a, "link", "set", va, "up"], ["ip", "-n", self.b, "link", "set", vb, "up"],
            ["ip", "-n", self.a, "link", "set", "lo", "up"],
            ["ip", "-n", self.b, "link", "set", "lo", "up"],
        ]  # fmt: skip
        for c in cmds:
            try:
                r = subprocess.run(c, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.close()
                pytest.skip(f"network namespaces unavailable: {e}")
            if r.returncode != 0:
                self.close()
                pytest.skip(f"network namespaces unavailable: {' '.join(c)}: "
                            f"{r.stderr.decode(errors='replace').strip()}")

    def close(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
