"""The learn phase with 1 rank x T threads against T ranks x 1 thread (policies/distributed.py,
gloo), on the same rows and seed, and the all-reduce time per optimizer step, as one table.

    .venv/bin/python scripts/bench_learner_ranks.py                        # the embedded 135M model, 2 cores
    .venv/bin/python scripts/bench_learner_ranks.py --model tiny --rows 32 # a tiny random model (seconds)

Every configuration runs in fresh processes (torch.multiprocessing), loads the model, trains
one warm-up iteration, then times `--iterations` more; the loss of the last iteration is
printed so that the runs can be seen to compute the same thing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

WORDS = "the a cat dog sat ran on mat big small red blue is was and yes no sun moon tree".split()


def config(model_path: str, threads: int, args):
    from alignloop.loop.config import validate_config

    return validate_config(
        {
            "name": "bench",
            "data": {"path": "unused"},
            "model": {
                "path": model_path,
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "objective": {"type": "sft", "min_score": 0.0},
                "minibatch_size": args.minibatch,
                "micro_batch_size": args.micro,
                "threads": threads,
                "device": "cpu",
            },
        }
    )


def rows(tokenizer, n: int, tokens: int, version: int):
    """n responses of about `tokens` words each, every one accepted (score 1)."""
    from alignloop.policies.objectives.base import Example
    from alignloop.records import Judgment, Message, Prompt, Sample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        prompt = Prompt(id=f"p{i}", messages=[Message(role="user", content=" ".join(rng.choice(WORDS, 12)))])
        text = " ".join(rng.choice(WORDS, int(tokens * rng.uniform(0.5, 1.5))))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        s = Sample(id=f"s{i}", prompt_id=prompt.id, response=text, policy_version=version, token_ids=ids)
        out.append(Example(prompt, s, Judgment(sample_id=s.id, score=1.0, judge="bench")))
    return out


def rank_main(rank: int, world: int, threads: int, address: str, model_path: str, args, out: str) -> None:
    from alignloop.policies.distributed import RankLearner
    from alignloop.policies.learner import Learner

    cfg = config(model_path, threads, args)
    if world > 1:
        learner: Learner = RankLearner(cfg.model, cfg.learner, 1.0, 0, rank=rank, world=world)
        learner.join(address)  # type: ignore[attr-defined]
    else:
        learner = Learner(cfg.model, cfg.learner, 1.0, 0)
    learner.learn(rows(learner.tokenizer, args.rows, args.tokens, 0), 0)  # warm-up
    reduce0 = learner.group.allreduce_s if learner.group else 0.0
    t0, steps = time.perf_counter(), 0
    for it in range(1, args.iterations + 1):
        metrics = learner.learn(rows(learner.tokenizer, args.rows, args.tokens, learner.version), it)
        steps += int(metrics["steps"])
    learn_s = (time.perf_counter() - t0) / args.iterations
    reduce_s = (learner.group.allreduce_s - reduce0) / steps if learner.group else 0.0
    if rank == 0:
        torch.save(
            {"learn_s": learn_s, "steps": steps / args.iterations, "reduce_s": reduce_s, "loss": metrics["loss"]}, out
        )
    if learner.group:
        learner.group.close()


def measure(world: int, threads: int, model_path: str, args, tmp: str) -> dict:
    from alignloop.policies.distributed import free_port

    out = os.path.join(tmp, f"{world}x{threads}.pt")
    mp.spawn(rank_main, args=(world, threads, f"127.0.0.1:{free_port()}", model_path, args, out), nprocs=world)
    return torch.load(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model path, embedded name, or 'tiny'")
    ap.add_argument(
        "--cores", type=int, default=os.cpu_count() or 1, help="T: threads of one rank, ranks of one thread"
    )
    ap.add_argument("--rows", type=int, default=16, help="rows per iteration")
    ap.add_argument("--tokens", type=int, default=48, help="mean response length, in words")
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=2, help="timed iterations (after one warm-up)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if model_path == "tiny":
            from alignloop.policies.tiny import build_tiny_model

            model_path = str(build_tiny_model(Path(tmp) / "tiny", WORDS, hidden=256, layers=4))
        t = args.cores
        results = {f"1 rank x {t} threads": measure(1, t, model_path, args, tmp)}
        results[f"{t} ranks x 1 thread"] = measure(t, 1, model_path, args, tmp)
    print(
        f"\nmodel {args.model}, {args.rows} rows of ~{args.tokens} words, minibatch {args.minibatch}, "
        f"micro-batch {args.micro}, mean of {args.iterations} iterations\n"
    )
    print("| configuration | learn s / iteration | steps | s / step | all-reduce ms / step | last loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['learn_s']:.2f} | {r['steps']:.0f} | {r['learn_s'] / r['steps']:.2f} | "
            f"{r['reduce_s'] * 1e3:.1f} | {r['loss']:.5f} |"
        )


if __name__ == "__main__":
    main()
