"""REINFORCE with a baseline: push up log pi(y) of responses that beat the iteration's mean
reward, push down the others (the negative gradient)."""

from __future__ import annotations

import numpy as np
import torch

from alignloop.policies.objectives.advantages import mean_baseline_advantages
from alignloop.policies.objectives.base import Example, Objective, TrainBatch
from alignloop.records import merge_metrics


def reinforce_loss(batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """-mean over rows of A * log pi(y), with log pi(y) the sum over the response's tokens:
    the score-function estimate of the gradient of the expected reward. No importance ratio,
    so extra epochs over the same samples are plain (biased) reuse; GRPO and PPO correct it."""
    assert batch.plain is not None and batch.advantage is not None  # declared by Reinforce
    seq_logprob = (batch.plain * batch.mask).sum(-1)  # (B,)
    loss = -(batch.advantage * seq_logprob).mean()
    return loss, {"seq_logprob": seq_logprob.mean().item()}


def with_signal(examples: list[Example]) -> list[Example]:
    """Rows whose advantage is 0 add nothing to the gradient; leaving them out saves their
    forward and backward passes."""
    return [e for e in examples if e.advantage != 0.0]


class Reinforce(Objective):
    row_values = ("advantage",)

    def select(self, examples: list[Example], rng: np.random.Generator):
        counts = mean_baseline_advantages(examples)
        keep = with_signal(examples)
        return keep, merge_metrics(counts, {"n_train": len(keep)})

    def loss(self, batch: TrainBatch):
        return reinforce_loss(batch)
