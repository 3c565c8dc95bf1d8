"""What the transformers sampler's speed depends on, on this machine: a raw `model.generate`
of the base model, the same with the LoRA adapter applied unmerged (as the hf sampler serves
it today), and with the adapter merged into the weights, in float32 and in bfloat16.

    python scripts/bench_hf_sampling.py                 # 8 prompts x 4 samples x 48 tokens
    python scripts/bench_hf_sampling.py --prompts 16 --threads 1

Every variant decodes exactly --max-new-tokens tokens per sequence (min_new_tokens), from the
same prompts and seed; the best of --repeats timed runs after one warm-up is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from alignloop.policies.model import left_pad, load_model, load_tokenizer, render_prompt, resolve_model_path  # noqa: E402

MODEL = "smollm2-135m-instruct"


def batch(tokenizer, n: int):
    rows = [json.loads(line) for line in (ROOT / "configs/prompts/quickstart.jsonl").read_text().splitlines()[:n]]
    ids = [render_prompt(tokenizer, [{"role": "user", "content": r["instruction"]}]) for r in rows]
    return left_pad(ids, tokenizer.pad_token_id)


def timed(model, inputs, k: int, tokens: int, repeats: int, pad: int) -> float:
    """Generated tokens per second, best of `repeats` after a warm-up."""
    best = float("inf")
    for r in range(repeats + 1):
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=inputs[0],
                attention_mask=inputs[1],
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                num_return_sequences=k,
                pad_token_id=pad,
            )
        if r:
            best = min(best, time.perf_counter() - start)
    return inputs[0].shape[0] * k * tokens / best


def with_adapter(base, seed: int = 0):
    """The quickstart's LoRA (r16 on the MLP) with every B moved off zero, so it changes the model."""
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=16, lora_alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"])
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=gen).to(p.dtype))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    inputs = batch(tokenizer, args.prompts)
    print(
        f"{MODEL}, {args.prompts} prompts x {args.k} samples x {args.max_new_tokens} tokens, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print("| dtype | base model (raw generate) | adapter unmerged | adapter merged | unmerged / raw | merged / raw |")
    print("|---|---|---|---|---|---|")
    for dtype in ("float32", "bfloat16"):
        base = load_model(path, dtype, "cpu").eval()
        raw = timed(base, inputs, args.k, args.max_new_tokens, args.repeats, tokenizer.pad_token_id)
        unmerged = with_adapter(base)
        lora = timed(unmerged, inputs, args.k, args.max_new_tokens, args.repeats, tokenizer.pad_token_id)
        merged = with_adapter(base).merge_and_unload().eval()
        fused = timed(merged, inputs, args.k, args.max_new_tokens, args.repeats, tokenizer.pad_token_id)
        print(
            f"| {dtype} | {raw:.0f} tok/s | {lora:.0f} tok/s | {fused:.0f} tok/s | {lora / raw:.2f} | "
            f"{fused / raw:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
