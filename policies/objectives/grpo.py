"""GRPO (Shao et al. 2024): advantages normalised within each prompt's group of k samples,
and PPO's clipped importance ratio so that several epochs can reuse one iteration's samples.
No KL term: use `ppo` for a penalty to the reference."""

from __future__ import annotations

import numpy as np
import torch

from alignloop.policies.objectives.advantages import group_normalized_advantages
from alignloop.policies.objectives.base import Example, Objective, TrainBatch, masked_mean, sequence_mean
from alignloop.policies.objectives.options import GRPOOptions
from alignloop.policies.objectives.reinforce import with_signal
from alignloop.records import merge_metrics


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token -min(r A, clip(r, 1-eps, 1+eps) A) with r = pi / pi_old.

    Returns the (B, T) loss, the (B, T) ratio and the (B, T) mask of tokens where the clip is
    active (r beyond the boundary in the direction the advantage pushes it: such a token gives
    no gradient). Exactly at r = 1 +- eps the clip is not active and the gradient is r A."""
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T); 1 on padding, which the caller masks
    adv = advantages[:, None]  # (B, 1)
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)  # (B, T)
    active = ((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps))  # (B, T)
    return loss, ratio, active


AVERAGES = {
    "sequence": lambda x, mask: sequence_mean(x, mask).mean(),
    "token": masked_mean,
}


def grpo_loss(batch: TrainBatch, options: GRPOOptions) -> tuple[torch.Tensor, dict[str, float]]:
    """sequence: each response's token mean, then the mean over rows (the GRPO paper; every
    response weighs the same). token: the mean over all tokens of the micro-batch (DAPO; every
    token weighs the same, so long responses are not diluted)."""
    # GRPO declares `advantage` and needs_old_logprobs, and scores under the plain context
    assert batch.plain is not None and batch.old_logprobs is not None and batch.advantage is not None
    per_token, ratio, active = clipped_surrogate(batch.plain, batch.old_logprobs, batch.advantage, options.clip_eps)
    loss = AVERAGES[options.average](per_token, batch.mask)
    return loss, {
        "clip_frac": masked_mean(active.float(), batch.mask).item(),
        "ratio": masked_mean(ratio.detach(), batch.mask).item(),
    }


class GRPO(Objective):
    row_values = ("advantage",)
    needs_old_logprobs = True

    def select(self, examples: list[Example], rng: np.random.Generator):
        counts = group_normalized_advantages(examples, self.options.scale_by_std, self.options.std_eps)
        keep = with_signal(examples)  # flat groups and k = 1 drop out here (advantage 0)
        return keep, merge_metrics(counts, {"n_train": len(keep)})

    def loss(self, batch: TrainBatch):
        return grpo_loss(batch, self.options)

    def averages_over(self, mask: torch.Tensor) -> float:
        return mask.sum().item() if self.options.average == "token" else float(mask.shape[0])
