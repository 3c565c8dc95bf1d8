"""RLOO (REINFORCE leave-one-out, Ahmadian et al. 2024): REINFORCE where each sample's
baseline is the mean reward of the other k-1 samples of its prompt."""

from __future__ import annotations

import numpy as np

from alignloop.policies.objectives.advantages import rloo_advantages
from alignloop.policies.objectives.base import Example, Objective, TrainBatch
from alignloop.policies.objectives.reinforce import reinforce_loss, with_signal
from alignloop.records import merge_metrics


class RLOO(Objective):
    row_values = ("advantage",)

    def select(self, examples: list[Example], rng: np.random.Generator):
        counts = rloo_advantages(examples)
        keep = with_signal(examples)  # flat prompts and k = 1 drop out here (advantage 0)
        return keep, merge_metrics(counts, {"n_train": len(keep)})

    def loss(self, batch: TrainBatch):
        return reinforce_loss(batch)
