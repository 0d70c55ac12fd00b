"""vLLM (CPU) with the KVStash connector: a multi-turn chat over a shared-data document (each turn
loads the previous turns' blocks from cachesvc).

References use the same numerics: the chat is compared with vLLM's own prefix cache, which
restores the same full blocks (prompt and generated tokens alike) that the connector stores."""

import os
import tempfile

import pytest

from vllm_testing import (CacheService, assert_no_engine_exception, connector, prompt_tokens,
                          run_engine)

QUESTIONS = [
    "Summarise the passage above in two sentences.",
    "Who is the narrator, and what do we learn about his family?",
    "What happens next? Answer briefly.",
]


@pytest.fixture(scope="module")
def svc():
    s = CacheService()
    yield s
    s.close()


def document(n_tokens: int = 700) -> str:
    from transformers import AutoTokenizer

    from vllm_testing import model_dir

    tok = AutoTokenizer.from_pretrained(model_dir())
    return tok.decode(prompt_tokens(n_tokens, corpus="botchan.txt"))


def test_multi_turn_chat_hits_previous_turns_with_identical_tokens(svc):
    chat = {"document": document(), "questions": QUESTIONS, "turns": 3}
    ref = run_engine({"chat": chat, "max_tokens": 48, "prefix_caching": True})
    stats = os.path.join(tempfile.mkdtemp(), "chat")
    r = run_engine({"chat": chat, "max_tokens": 48, "connector": connector(svc, stats),
                    "stats_path": stats})
    assert_no_engine_exception(r)
    assert r["prompt_lens"] == ref["prompt_lens"]
    assert r["outputs"] == ref["outputs"]
    s = r["stats"]["scheduler"]
    # Turns 2 and 3 extend the previous prompt and answer: their full blocks come from cachesvc.
    lens = r["prompt_lens"]
    assert s["hit_tokens"] >= 2 * (lens[0] // 128 * 128), (lens, r["stats"])
    assert r["stats"]["worker"].get("load_blocks_failed", 0) == 0
