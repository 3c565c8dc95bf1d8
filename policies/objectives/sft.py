"""Filtered SFT (and best-of-N): maximum likelihood on the responses the judge accepted."""

from __future__ import annotations

import numpy as np
import torch

from alignloop.policies.objectives.base import Example, Objective, TrainBatch, sequence_mean
from alignloop.policies.objectives.options import SFTOptions


def accepted(example: Example, options: SFTOptions) -> bool:
    j = example.judgment
    if options.min_score is not None and j.score is not None and j.score >= options.min_score:
        return True
    return j.verdict == "positive"


def nll_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over rows of each response's mean token NLL; logprobs and mask (B, T)."""
    nll = -sequence_mean(logprobs, mask)  # (B,)
    loss = nll.mean()
    return loss, {"nll": loss.item()}


def sft_loss(batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """The NLL of the responses under the prompt they were sampled from."""
    assert batch.plain is not None  # every objective declares the plain context by default
    return nll_loss(batch.plain, batch.mask)


def best_per_prompt(examples: list[Example]) -> list[Example]:
    """The highest-scoring response of each prompt (the first on ties), whatever its verdict:
    best-of-N imitates the best the policy did, not an absolute bar."""
    best: dict[str, tuple[float, Example]] = {}  # prompt id -> (score, row)
    for e in examples:
        score = e.judgment.score if e.judgment.score is not None else float(e.judgment.verdict == "positive")
        cur = best.get(e.prompt.id)
        if cur is None or score > cur[0]:
            best[e.prompt.id] = (score, e)
    return [e for _, e in best.values()]


class FilteredSFT(Objective):
    def select(self, examples: list[Example], rng: np.random.Generator):
        if self.options.best_of_n:
            keep = best_per_prompt(examples)
        else:
            keep = [e for e in examples if accepted(e, self.options)]
        return keep, {"n_train": len(keep), "n_rejected": len(examples) - len(keep)}

    def loss(self, batch: TrainBatch):
        return sft_loss(batch)
