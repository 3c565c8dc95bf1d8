"""Does a model follow judgments well enough for CUT? Measures CUT's token detection on the
model's own responses against a banned-word rule judge, whose judgments name exactly the
tokens at fault: precision and recall of "p(y_t | x, j) / p(y_t | x) > lambda" against the
positions of the named words, for several lambda.

    .venv/bin/python scripts/cut_detection_probe.py                          # SmolLM2-135M, 64 responses
    .venv/bin/python scripts/cut_detection_probe.py --model PATH --words you,your,can --prompts 32

A model that follows judgments in context gives high precision at lambda = 1.1 (the paper's
default); one that does not gives detections close to chance.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import torch

from alignloop.judges import build_judge
from alignloop.loop.config import validate_config
from alignloop.loop.data import load_prompts
from alignloop.policies.learner import Learner
from alignloop.policies.objectives.base import Example
from alignloop.policies.samplers.hf import HFSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--words", default="you,your,can")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--data", default="configs/prompts/quickstart.jsonl")
    args = parser.parse_args()
    words = args.words.split(",")
    cfg = validate_config(
        {
            "name": "probe",
            "data": {"path": args.data},
            "model": {"path": args.model},
            "sampler": {"samples_per_prompt": args.k, "max_new_tokens": 64},
            "judge": {"type": "rules", "checks": [{"type": "banned_phrases", "phrases": words, "whole_words": True}]},
            "learner": {"objective": {"type": "cut", "downsample": None}},
        }
    )
    prompts = load_prompts(args.data)[: args.prompts]
    samples = HFSampler(cfg.model, cfg.sampler).generate(prompts, iteration=0, seed=0)
    by_id = {p.id: p for p in prompts}
    judgments = asyncio.run(build_judge(cfg.judge).judge([by_id[s.prompt_id] for s in samples], samples))
    learner = Learner(cfg.model, cfg.learner)
    learner.model.eval()
    rows, _ = learner.objective.select(
        [Example(by_id[s.prompt_id], s, j) for s, j in zip(samples, judgments)], np.random.default_rng(0)
    )
    negatives = [r for r in rows if r.negative]
    named, other = ratios(learner, negatives, words)
    print(
        f"{len(samples)} responses, {len(negatives)} negative ({len(negatives) / len(samples):.0%}); "
        f"{len(named)} tokens of banned words, {len(other)} other tokens in negatives"
    )
    print(
        f"median ratio p(y|x,j)/p(y|x): banned-word tokens {np.median(named):.3f}, other tokens {np.median(other):.3f}\n"
    )
    print("| lambda | precision | recall |\n|---|---|---|")
    for lam in (1.1, 1.5, 2.0, 3.0):
        tp, fp = int((named > lam).sum()), int((other > lam).sum())
        print(f"| {lam} | {tp / max(1, tp + fp):.2f} | {tp / max(1, len(named)):.2f} |")


@torch.no_grad()
def ratios(learner: Learner, negatives: list[Example], words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per response token of the negatives: the detection ratio, split by whether the token is
    part of a banned word the judgment names (the rule judge's spans of those words, mapped
    onto the sampled tokens as `detection: spans` maps them)."""
    named, other = [], []
    for s in range(0, len(negatives), 4):
        batch = learner.batch(negatives[s : s + 4])
        ratio = (batch.judged - batch.plain).exp()  # (B, T)
        on = batch.mask.bool()
        named += ratio[on & batch.span_mask.bool()].tolist()
        other += ratio[on & ~batch.span_mask.bool()].tolist()
    return np.array(named), np.array(other)


if __name__ == "__main__":
    main()
