#!/usr/bin/env python3
"""Runs one vLLM (CPU) engine in this process over a list of prompts; used by the vLLM tests and
scripts/bench_vllm.sh, always as a fresh process.

  vllm_runner.py SPEC.json OUT.json

SPEC: {"model": dir, "tp": tensor-parallel size (default 1), "prompts": [[token ids] | {"ids": [...], "cache_salt": s}, ...] | "chat": {...},
       "max_tokens": n, "async_scheduling": bool (default vLLM's),
       "prefix_caching": bool, "connector": null | {kv_role, extra_config},
       "example_connector": null | dir, "kill_before": {"<prompt index>": pid},
       "stats_path": file the connector writes (waited on for queued stores), "repeat": n,
       "kv_transfer_params": [per-prompt dict or null] (P/D: the producer's output),
       "warmup_before": {"<prompt index>": [token ids]}: an untimed request (max_tokens 1,
       its outputs not reported) run right before that prompt, e.g. to warm a fresh engine}
OUT:  {"outputs": [[token ids], ...], "ttft_s": [...], "kv_transfer_params": [...],
       "prompt_lens": [...], "cached_tokens": [per prompt: tokens not computed], "stats": {...}}

chat: {"document": text, "questions": [...], "turns": n}: a multi-turn conversation, each turn's
prompt is the chat template over the document, earlier questions and answers, and the next
question (so every prompt extends the previous one).
"""

import json
import os
import signal
import sys
import time


def wait_for_stores(stats_path: str, timeout_s: float = 60.0, rank: int = 0) -> dict:
    """Waits (bounded) until worker `rank`'s connector has finished every store it queued;
    its counters."""
    path = stats_path + f".worker{rank}.json"
    deadline = time.monotonic() + timeout_s
    stats = {}
    while time.monotonic() < deadline:
        try:
            with open(path) as fh:
                stats = json.load(fh)
        except (OSError, ValueError):
            stats = {}
        done = sum(stats.get(k, 0) for k in ("stored_blocks", "store_blocks_present",
                                             "store_blocks_failed"))
        if done >= stats.get("store_blocks_queued", 0):
            return stats
        time.sleep(0.05)
    return stats


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    kw = dict(
        model=spec["model"],
        dtype="bfloat16",
        max_model_len=4096,
        max_num_batched_tokens=4096,
        kv_cache_memory_bytes=256 << 20,
        enforce_eager=True,
        enable_prefix_caching=bool(spec.get("prefix_caching", False)),
        seed=0,
    )
    tp = int(spec.get("tp", 1))
    if tp > 1:
        kw["tensor_parallel_size"] = tp
        kw["distributed_executor_backend"] = "mp"
    if "async_scheduling" in spec:
        kw["async_scheduling"] = bool(spec["async_scheduling"])
    conn = spec.get("connector")
    if conn:
        extra = dict(conn.get("extra_config", {}))
        kw["kv_transfer_config"] = {
            "kv_connector": "KVStashConnector",
            "kv_connector_module_path": "kvstash.vllm_connector",
            "kv_role": conn.get("kv_role", "kv_both"),
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": extra,
        }
    if spec.get("example_connector"):
        kw["kv_transfer_config"] = {
            "kv_connector": "ExampleConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"shared_storage_path": spec["example_connector"]},
        }
    llm = LLM(**kw)
    sp = SamplingParams(temperature=0.0, max_tokens=int(spec.get("max_tokens", 16)))

    prompts = spec.get("prompts")
    chat = spec.get("chat")
    kill = {int(k): int(v) for k, v in (spec.get("kill_before") or {}).items()}
    outputs, ttft, prompt_lens, params_out, cached = [], [], [], [], []
    params_in = spec.get("kv_transfer_params") or []
    tok = llm.get_tokenizer()
    messages = []
    n = len(prompts) if prompts else int(chat["turns"])
    warmups = {int(k): v for k, v in (spec.get("warmup_before") or {}).items()}
    for i in range(n):
        if i in warmups:
            llm.generate([{"prompt_token_ids": list(warmups[i])}],
                         SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
        if i in kill:
            try:
                os.kill(kill[i], signal.SIGKILL)
            except ProcessLookupError:
                pass
        salt = None
        if prompts:
            ids = prompts[i]
            if isinstance(ids, dict):  # {"ids": [...], "cache_salt": "..."}
                ids, salt = ids["ids"], ids.get("cache_salt")
        else:
            q = chat["questions"][i % len(chat["questions"])]
            if i == 0:
                q = chat["document"] + "\n\n" + q
            messages.append({"role": "user", "content": q})
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tok.encode(text, add_special_tokens=False)
        prompt_lens.append(len(ids))
        for rep in range(int(spec.get("repeat", 1))):
            # TTFT: a one-token generation of the same prompt is what vLLM's first step costs;
            # measured separately only when asked, the tokens come from the full generation.
            p = sp
            if i < len(params_in) and params_in[i]:
                p = SamplingParams(temperature=0.0, max_tokens=sp.max_tokens,
                                   extra_args={"kv_transfer_params": params_in[i]})
            t0 = time.perf_counter()
            prompt = {"prompt_token_ids": list(ids)}
            if salt:
                prompt["cache_salt"] = salt
            out = llm.generate([prompt], p, use_tqdm=False)
            ttft.append(time.perf_counter() - t0)
        toks = list(out[0].outputs[0].token_ids)
        outputs.append(toks)
        # tokens the request did not compute: vLLM's prefix cache plus the connector's hit
        cached.append(getattr(out[0], "num_cached_tokens", None))
        params_out.append(out[0].kv_transfer_params)
        if chat:
            messages.append({"role": "assistant", "content": tok.decode(toks)})
        if spec.get("stats_path") and spec.get("wait_stores_each", True):
            for r in range(tp):
                wait_for_stores(spec["stats_path"], rank=r)
    stats = {}
    if spec.get("stats_path"):
        stats["worker"] = wait_for_stores(spec["stats_path"])
        for r in range(1, tp):
            stats[f"worker{r}"] = wait_for_stores(spec["stats_path"], rank=r)
        try:
            with open(spec["stats_path"] + ".scheduler.json") as fh:
                stats["scheduler"] = json.load(fh)
        except (OSError, ValueError):
            pass
    with open(sys.argv[2], "w") as fh:
        json.dump({"outputs": outputs, "ttft_s": ttft, "prompt_lens": prompt_lens,
                   "cached_tokens": cached,
                   "kv_transfer_params": params_out, "stats": stats}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
