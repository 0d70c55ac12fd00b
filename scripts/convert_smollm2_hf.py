#!/usr/bin/env python3
"""Converts the test model SmolLM2-135M-Instruct (Q4_1 GGUF, scripts/fetch_models.sh) into a
Hugging Face LlamaForCausalLM directory in bf16, which vLLM 0.32 can load (it cannot load GGUF).

transformers dequantizes the GGUF (from_pretrained(..., gguf_file=...), needs `gguf` and
`accelerate`), but save_pretrained refuses a model loaded from a quantized GGUF, so the state
dict is copied into a fresh LlamaForCausalLM built from the same config and that is saved.

Run with the vLLM venv's python (scripts/setup_vllm.sh). Idempotent: the output directory is
written under a temporary name and renamed, and a present one is left alone.

  convert_smollm2_hf.py [--gguf PATH] [--out DIR]
Defaults: $KVSTASH_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf ->
          $KVSTASH_CACHE/models/SmolLM2-135M-Instruct-hf
"""
import argparse
import json
import os
import shutil
import sys


def main() -> int:
    cache = os.environ.get("KVSTASH_CACHE", os.path.expanduser("~/.cache/kvstash"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(cache, "models", "SmolLM2-135M-Instruct-hf"))
    args = ap.parse_args()

    stamp = os.path.join(args.out, ".kvstash-converted-v2")
    if os.path.exists(stamp):
        print(f"[convert] present: {args.out}")
        return 0
    if not os.path.exists(args.gguf):
        print(f"[convert] missing {args.gguf} (run scripts/fetch_models.sh)", file=sys.stderr)
        return 1

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    src = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    config = src.config
    config.torch_dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the source state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        print(f"[convert] state dict mismatch: missing={missing} unexpected={unexpected}",
              file=sys.stderr)
        return 1
    model = model.to(torch.bfloat16)

    tmp = args.out + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    # The config still names the GGUF quantization it was read from; the saved weights are plain
    # bf16 and vLLM refuses an unknown quantization method, so drop it.
    cfg_path = os.path.join(tmp, "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg.pop("quantization_config", None)
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
    # Where the weights came from, so the directory's identity can be checked.
    with open(os.path.join(tmp, ".kvstash-converted-v2"), "w") as fh:
        fh.write(f"source={os.path.basename(args.gguf)}\n")
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp, args.out)
    print(f"[convert] ready: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
