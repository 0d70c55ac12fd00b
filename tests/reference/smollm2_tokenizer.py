#!/usr/bin/env python3
"""Independent token ids for the GGUF byte-level BPE tokenizer, from the PyPI `tokenizers`
package (Hugging Face's Rust implementation), built from the GGUF's vocab and merges with the
pre-tokenizer SmolLM2 ships (Digits(individual_digits) then ByteLevel with the GPT-2 regex) and
its control tokens as special added tokens.

Input: one string per line, hex-encoded UTF-8 (so any text survives). Output: one line per
input with the comma-separated ids.

Run: ~/.cache/kvstash/venv/bin/python tests/reference/smollm2_tokenizer.py MODEL.gguf IN OUT
"""
import sys

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def main():
    model, inp, out = sys.argv[1:4]
    reader = GGUFReader(model)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    with open(inp) as f, open(out, "w") as g:
        for line in f:
            text = bytes.fromhex(line.strip()).decode("utf-8")
            ids = tok.encode(text, add_special_tokens=False).ids
            g.write(",".join(str(i) for i in ids) + "\n")


if __name__ == "__main__":
    main()
