"""GPU smoke test: the learner and the transformers sampler on CUDA in bfloat16, through the
in-process roles (no Ray, no vLLM): two iterations of sample -> score -> learn -> export ->
publish, printing each phase's seconds and how closely the sampler's log-probs of its own
tokens agree with the learner's.

    .venv/bin/python scripts/gpu_smoke.py                       # CUDA, bf16, 1 rank (N ranks over NCCL with N GPUs)
    .venv/bin/python scripts/gpu_smoke.py --ranks 2             # 2 learner ranks (needs 2 GPUs on CUDA)
    .venv/bin/python scripts/gpu_smoke.py --device cpu          # the same on CPU (float32, gloo for --ranks > 1)
    .venv/bin/python scripts/gpu_smoke.py --ranks 2 --shard-base  # the base sharded over the ranks (FSDP2)
    .venv/bin/python scripts/gpu_smoke.py --model smollm2-135m-instruct   # the embedded model instead of a tiny random one

With several ranks, rank 0 drives the sampler and hands each iteration's rows to the others;
every rank trains on its share of each micro-batch (policies/distributed.py). The LoRA weights
stay float32 (PEFT keeps adapters in float32 over a bf16 base): bf16 compute, fp32 master weights.
Exit 0 when both adapter versions were published and served, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = [
    "the cat sat on the mat",
    "a big red dog ran",
    "is the sun small",
    "the moon was blue",
    "a tree and a dog",
    "yes or no",
    "the small cat ran on the tree",
    "red and blue",
]
WORDS = "the a cat dog sat ran on mat big small red blue is was and yes no sun moon tree".split()


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--ranks", type=int, default=None, help="learner ranks (default: the GPUs on CUDA, 1 on CPU)")
    ap.add_argument("--model", default=None, help="model path or embedded name (default: a tiny random model)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--shard-base", action="store_true", help="shard the base over the ranks with FSDP2 (--ranks >= 2)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible: run with --device cpu, or on a GPU machine")
    if args.ranks is None:
        args.ranks = max(1, torch.cuda.device_count()) if args.device == "cuda" else 1
    if args.device == "cuda" and args.ranks > torch.cuda.device_count():
        sys.exit(f"--ranks {args.ranks} needs {args.ranks} GPUs; {torch.cuda.device_count()} visible")
    if args.shard_base and args.ranks < 2:
        sys.exit("--shard-base shards over the learner's ranks: give --ranks 2 or more")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def config(args, model_path: str):
    from alignloop.loop.config import validate_config

    gpu = 1 if args.device == "cuda" else 0
    threads = max(1, (os.cpu_count() or 1) // args.ranks)
    return validate_config(
        {
            "name": "gpu-smoke",
            "data": {"path": "unused"},
            "model": {
                "path": model_path,
                "dtype": args.dtype,
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "sampler": {"samples_per_prompt": 4, "max_new_tokens": args.max_new_tokens, "num_gpus": gpu},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "objective": {"type": "sft", "best_of_n": True},
                "lr": 1e-3,
                "minibatch_size": 8,
                "micro_batch_size": 4,
                "device": args.device,
                "num_gpus": gpu,
                "threads": threads,
                "ranks": args.ranks,
                "shard_base": args.shard_base,
            },
        }
    )


def scored(prompts, samples):
    """Rows for SFT best-of-n: a made-up score that prefers short responses (the smoke test
    checks the machinery, not what is learned)."""
    from alignloop.policies.objectives.base import Example
    from alignloop.records import Judgment

    by_id = {p.id: p for p in prompts}
    return [
        Example(by_id[s.prompt_id], s, Judgment(sample_id=s.id, score=-float(len(s.token_ids or ())), judge="smoke"))
        for s in samples
    ]


def agreement(learner, rows) -> tuple[float, float]:
    """Mean and largest |sampler log-prob - learner log-prob| over the sampled tokens."""
    mine = learner.sequence_logprobs(rows)
    gaps = [abs(a - b) for e, lp in zip(rows, mine) for a, b in zip(e.sample.logprobs or (), lp)]
    return sum(gaps) / max(1, len(gaps)), max(gaps, default=0.0)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_rank(rank: int, world: int, address: str, args, model_path: str) -> None:
    import torch.distributed as dist

    from alignloop.loop.roles.local import LocalCalls, LocalHandle, LocalLearner
    from alignloop.loop.roles.protocols import SampleChunk
    from alignloop.loop.roles.samplers import SamplerReplicas
    from alignloop.policies.distributed import RankLearner
    from alignloop.policies.learner import Learner
    from alignloop.policies.samplers.hf import HFSampler
    from alignloop.records import Message, Prompt

    cfg = config(args, model_path)
    t0 = time.perf_counter()
    if world > 1:
        rank_learner = RankLearner(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed, rank=rank, world=world)
        rank_learner.join(address)
        learner_obj: Learner = rank_learner
    else:
        learner_obj = Learner(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed)
    learner = LocalLearner(learner_obj)
    lead = rank == 0
    samplers = SamplerReplicas([LocalHandle(HFSampler(cfg.model, cfg.sampler))], LocalCalls()) if lead else None
    prompts = [Prompt(id=f"p{i}", messages=[Message(role="user", content=t)]) for i, t in enumerate(PROMPTS)]
    if lead:
        print(
            f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
            f"dtype {args.dtype}, {world} learner rank(s){' (FSDP2-sharded)' if args.shard_base else ''}, "
            f"model {model_path}; loaded in {time.perf_counter() - t0:.1f} s"
        )
    # Sharded ranks gather the adapter, and run every forward, together: all of them take part.
    together = lead or args.shard_base
    v0 = learner.export() if together else None  # the untrained adapter
    if lead:
        assert samplers is not None and v0 is not None
        samplers.publish(v0)
    for it in range(1, 3):
        timings: dict[str, float] = {}
        rows: list = [None]
        if lead:
            assert samplers is not None
            t = time.perf_counter()
            samples = samplers.generate([SampleChunk(prompts, step=it, seed=it)])[0]
            sync()
            timings["sample"] = time.perf_counter() - t
            rows = [scored(prompts, samples)]
        if world > 1:
            dist.broadcast_object_list(rows, src=0)
        if together:
            mean_gap, max_gap = agreement(learner_obj, rows[0])
        t = time.perf_counter()
        metrics = learner.learn(rows[0], it)
        sync()
        timings["learn"] = time.perf_counter() - t
        t = time.perf_counter()
        exported = learner.export() if together else None
        timings["export"] = time.perf_counter() - t
        if not lead:
            continue
        assert samplers is not None and exported is not None
        timings["publish"] = samplers.publish(exported)
        served = samplers.handles[0].serving.remote().result()
        assert served == (exported.payload.version, exported.payload.checksum), served
        print(
            f"v{exported.payload.version}: "
            + " ".join(f"{k} {v:.2f}s" for k, v in timings.items())
            + f" | loss {metrics['loss']:.4f} steps {metrics['steps']:.0f}"
            + f" | sampler-vs-learner log-prob gap mean {mean_gap:.2e} max {max_gap:.2e} over {len(rows[0])} rows"
        )
    if lead:
        print("ok: two adapter versions published and served")
    if world > 1:
        dist.barrier()
        rank_learner.leave()


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if model_path is None:
            from alignloop.policies.tiny import build_tiny_model

            model_path = str(build_tiny_model(Path(tmp) / "tiny", WORDS, hidden=128))
        if args.ranks == 1:
            run_rank(0, 1, "", args, model_path)
            return
        import torch.multiprocessing as mp

        from alignloop.policies.distributed import free_port

        mp.spawn(run_rank, args=(args.ranks, f"127.0.0.1:{free_port()}", args, model_path), nprocs=args.ranks)


if __name__ == "__main__":
    main()
