"""CUT — Contrastive Unlikelihood Training (Xu et al. 2023, "Reasons to Reject?"), as the
official code does it (METHODS.md §1).

For a negative response y with judgment j:
  Align-N:   NLL of y under [x, j]                (the judgment "explains" y)
  Misalign:  y under the plain prompt x; token t is inappropriate when
             p(y_t | x, j) / p(y_t | x) > lambda  (ratio detached)
             inappropriate -> -alpha * log(1 - p(y_t | x) + 1e-5)   (unlikelihood)
             otherwise     -> -log p(y_t | x)                          (likelihood)
  L_N = 1/2 * (Align-N mean NLL + Misalign mean over tokens)
For a positive response: Align-P, the NLL of y under x.
"""

from __future__ import annotations

import numpy as np
import torch

from records import Message
from policies.objectives.base import Example, Objective, TrainBatch, sequence_mean
from policies.objectives.options import CUTOptions

EPS = 1e-5  # inside the log of 1 - p, which is 0 when p rounds to 1


def judgment_messages(example: Example, template: str, judgment: str) -> list[Message]:
    """The prompt with its last user turn rewritten to carry the judgment."""
    messages = list(example.prompt.messages)
    content = template.format(instruction=example.prompt.instruction, judgment=judgment)
    last = max(i for i, m in enumerate(messages) if m.role == "user")
    messages[last] = Message(role="user", content=content)
    return messages


def inappropriate_tokens(batch: TrainBatch, options: CUTOptions) -> torch.Tensor:
    """(B, T) 1.0 where a negative's token is one its judgment explains:
    p(y_t | x, j) / p(y_t | x) > lambda, compared without gradient. With token_detection off
    (the paper's ablation) every token of a negative counts."""
    mask, neg = batch.mask, batch.values["negative"]  # (B, T), (B,)
    if options.token_detection:
        ratio = (batch.logprobs["judged"] - batch.logprobs["plain"]).detach().exp()
        detected = (ratio > options.threshold).float()
    else:
        detected = torch.ones_like(mask)
    return detected * mask * neg[:, None]


def cut_loss(batch: TrainBatch, options: CUTOptions) -> tuple[torch.Tensor, dict[str, float]]:
    """batch.values["negative"] (B,) is 1.0 for negatives; logprobs "plain" and "judged" (B, T)."""
    mask, neg = batch.mask, batch.values["negative"]  # (B, T), (B,)
    lp_plain, lp_judged = batch.logprobs["plain"], batch.logprobs["judged"]  # (B, T)
    inappropriate = inappropriate_tokens(batch, options)  # (B, T)
    p_plain = lp_plain.exp()
    weight = options.unlikelihood_weight
    if options.dynamic_gamma is not None:
        weight = weight * lp_judged.detach().exp().pow(options.dynamic_gamma)  # alpha * p(y_t|x,j)^gamma
    unlikelihood = -weight * torch.log(1 - p_plain + EPS)  # (B, T)
    misalign = torch.where(inappropriate.bool(), unlikelihood, -lp_plain)  # (B, T)
    align_n = -sequence_mean(lp_judged, mask)  # (B,)
    negative_loss = 0.5 * (align_n + sequence_mean(misalign, mask))  # (B,)
    positive_loss = -sequence_mean(lp_plain, mask)  # (B,) Align-P
    per_row = torch.where(neg.bool(), negative_loss, positive_loss)
    neg_tokens = (mask * neg[:, None]).sum()
    return per_row.mean(), {
        "detected_fraction": (inappropriate.sum() / neg_tokens.clamp(min=1)).item(),
        "unlikelihood_part": ((unlikelihood * inappropriate).sum() / neg_tokens.clamp(min=1)).item(),
        "likelihood_part": (-(lp_plain * mask * (1 - inappropriate)).sum() / mask.sum().clamp(min=1)).item(),
        "align_n_nll": (align_n * neg).sum().item() / max(1.0, neg.sum().item()),
    }


class CUT(Objective):
    contexts = ("plain", "judged")

    def select(self, examples: list[Example], rng: np.random.Generator):
        negatives = [e for e in examples if e.judgment.verdict == "negative" and e.judgment.critique]
        positives = [e for e in examples if e.judgment.verdict == "positive"]
        if self.options.downsample is not None:
            keep = min(len(positives), int(self.options.downsample * len(negatives)))
            positives = [positives[i] for i in sorted(rng.choice(len(positives), keep, replace=False))]
        for e in negatives:
            e.values["negative"] = 1.0
        for e in positives:
            e.values["negative"] = 0.0
        no_critique = sum(e.judgment.verdict == "negative" and not e.judgment.critique for e in examples)
        return negatives + positives, {
            "n_train": len(negatives) + len(positives), "n_negative": len(negatives),
            "n_positive": len(positives), "n_negative_without_critique": no_critique,
        }

    def context_messages(self, context: str, example: Example):
        if context == "judged":
            if example.values.get("negative") != 1.0:
                return None  # a positive is only scored under the plain prompt
            return judgment_messages(example, self.options.judgment_template, example.judgment.critique)
        return super().context_messages(context, example)

    def loss(self, batch: TrainBatch):
        return cut_loss(batch, self.options)
