"""PPO-clip with a KL penalty to the reference policy. For a LoRA learner the reference is
the base model with the adapter disabled, so no second copy of the weights is held.

There is no value head: the advantage is RLOO's leave-one-out baseline over the k samples of
each prompt (critic-free PPO, as in Ahmadian et al. 2024), one advantage for every token of a
response."""

from __future__ import annotations

import numpy as np
import torch

from alignloop.policies.objectives.advantages import rloo_advantages
from alignloop.policies.objectives.base import Example, Objective, TrainBatch, masked_mean
from alignloop.policies.objectives.grpo import clipped_surrogate
from alignloop.policies.objectives.options import PPOOptions
from alignloop.records import merge_metrics


def kl_to_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(B, T) per-token estimate of KL(pi || pi_ref) on tokens sampled from pi: the "k3"
    estimator exp(d) - d - 1 with d = log pi_ref - log pi. It is never negative and has low
    variance, unlike the plain log-ratio. 0 on padding, where both log-probs are 0."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def ppo_loss(batch: TrainBatch, options: PPOOptions) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over all tokens of the clipped surrogate plus kl_coef * KL(pi || pi_ref)."""
    lp = batch.plain  # (B, T)
    # PPO declares `advantage`, needs_reference and needs_old_logprobs
    assert lp is not None and batch.old_logprobs is not None and batch.advantage is not None
    assert batch.ref_logprobs is not None
    surrogate, ratio, active = clipped_surrogate(lp, batch.old_logprobs, batch.advantage, options.clip_eps)
    kl = kl_to_reference(lp, batch.ref_logprobs)  # (B, T)
    policy_loss, kl_loss = masked_mean(surrogate, batch.mask), masked_mean(kl, batch.mask)
    return policy_loss + options.kl_coef * kl_loss, {
        "policy_loss": policy_loss.item(),
        "kl_penalty": kl_loss.item(),
        "clip_frac": masked_mean(active.float(), batch.mask).item(),
        "ratio": masked_mean(ratio.detach(), batch.mask).item(),
    }


class PPO(Objective):
    row_values = ("advantage",)
    needs_reference = True
    needs_old_logprobs = True

    def select(self, examples: list[Example], rng: np.random.Generator):
        counts = rloo_advantages(examples)
        # Rows of flat prompts stay: their advantage is 0 but the KL term still acts on them.
        return examples, merge_metrics(counts, {"n_train": len(examples)})

    def loss(self, batch: TrainBatch):
        return ppo_loss(batch, self.options)

    def averages_over(self, mask: torch.Tensor) -> float:
        return mask.sum().item()  # both terms are means over the micro-batch's tokens
