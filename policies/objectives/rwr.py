"""Reward-weighted regression: -exp(r / beta) * log pi(y), maximum likelihood on every
sample weighted by its exponentiated reward (beta -> 0: best sample only; beta -> inf: SFT
on everything).

Overflow: exp(r / beta) overflows for large r / beta (r = 100, beta = 1 already gives e^100).
The weights are therefore normalised over the iteration, w_i = N * softmax(r / beta)_i,
computed as exp((r_i - max r) / beta) / mean: the same ratios between samples as exp(r / beta),
a mean weight of 1, and no overflow. Only a constant factor changes, i.e. the step size, and
AdamW is nearly invariant to it. Clipping the weights instead would change their ratios."""

from __future__ import annotations

import numpy as np
import torch

from alignloop.policies.objectives.advantages import reward
from alignloop.policies.objectives.base import Example, Objective, TrainBatch, sequence_mean


def rwr_weights(rewards: np.ndarray, beta: float) -> np.ndarray:
    """(N,) -> (N,): exp(r / beta) rescaled to mean 1."""
    w = np.exp((rewards - rewards.max()) / beta)  # (N,) in (0, 1], the max is exactly 1
    return w / w.mean()


def rwr_loss(batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """-mean over rows of w * (mean token log-prob of the response): the weighted form of the
    SFT loss (same per-row token mean), so RWR with equal weights is exactly SFT."""
    assert batch.plain is not None and batch.weight is not None  # declared by RWR
    nll = -sequence_mean(batch.plain, batch.mask)  # (B,)
    loss = (batch.weight * nll).mean()
    return loss, {"nll": nll.mean().item()}


class RWR(Objective):
    row_values = ("weight",)

    def select(self, examples: list[Example], rng: np.random.Generator):
        if not examples:
            return [], {"n_train": 0}
        w = rwr_weights(np.array([reward(e) for e in examples], dtype=np.float64), self.options.beta)
        for e, wi in zip(examples, w):
            e.weight = float(wi)
        return examples, {"n_train": len(examples), "weight_max": float(w.max()), "weight_min": float(w.min())}

    def loss(self, batch: TrainBatch):
        return rwr_loss(batch)
