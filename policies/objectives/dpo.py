"""Online DPO and IPO: pairs built each iteration from the policy's own samples, ranked by
the judge's scores (or verdicts), against the reference policy (the adapter disabled).

Rows arrive in pairs, chosen then rejected (unit = 2, so a minibatch never splits a pair).
h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)], sequence log-prob sums.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from alignloop.policies.objectives.advantages import build_pairs
from alignloop.policies.objectives.base import Example, Objective, TrainBatch
from alignloop.policies.objectives.options import DPOOptions
from alignloop.records import merge_metrics


def pair_margin(batch: TrainBatch) -> torch.Tensor:
    """(B/2,) h for each (chosen, rejected) pair of consecutive rows."""
    chosen = batch.chosen  # (B,)
    # DPO declares `chosen` and needs_reference, and scores under the plain context
    assert chosen is not None and batch.plain is not None and batch.ref_logprobs is not None
    if not (torch.all(chosen[0::2] == 1) and torch.all(chosen[1::2] == 0)):
        raise ValueError("DPO rows must alternate chosen, rejected; a minibatch split a pair")
    log_ratio = ((batch.plain - batch.ref_logprobs) * batch.mask).sum(-1)  # (B,)
    return log_ratio[0::2] - log_ratio[1::2]


# IPO's target for h: the paper's 1/(2 beta), or beta as the understanding-rlhf code has it
# (the same loss with beta reparametrised).
IPO_TARGETS = {"paper": lambda beta: 1 / (2 * beta), "code": lambda beta: beta}
# The pair loss as a function of h (B/2,) and the options.
PAIR_LOSSES = {
    "dpo": lambda h, o: -F.logsigmoid(o.beta * h),
    "ipo": lambda h, o: (h - IPO_TARGETS[o.ipo_target](o.beta)) ** 2,
}


def dpo_loss(batch: TrainBatch, options: DPOOptions) -> tuple[torch.Tensor, dict[str, float]]:
    h = pair_margin(batch)  # (B/2,)
    loss = PAIR_LOSSES[options.loss](h, options).mean()
    return loss, {"margin": h.mean().item(), "pair_accuracy": (h > 0).float().mean().item()}


class DPO(Objective):
    row_values = ("chosen",)
    needs_reference = True
    unit = 2

    def select(self, examples: list[Example], rng: np.random.Generator):
        rows, counts = build_pairs(examples, self.options.pairs, self.options.min_gap)
        return rows, merge_metrics(counts, {"n_train": len(rows)})

    def loss(self, batch: TrainBatch):
        return dpo_loss(batch, self.options)
