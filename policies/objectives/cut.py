"""CUT — Contrastive Unlikelihood Training (Xu et al. 2023, "Reasons to Reject?"), as the
official code does it (docs/methods.md §1).

For a negative response y with judgment j:
  Align-N:   NLL of y under [x, j]                (the judgment "explains" y)
  Misalign:  y under the plain prompt x; token t is inappropriate when
             p(y_t | x, j) / p(y_t | x) > lambda  (ratio detached; `detection: ratio`),
             or when a span the judge marked covers it (`spans`; `auto`: spans where given)
             inappropriate -> -alpha * log(1 - p(y_t | x) + 1e-5)   (unlikelihood)
             otherwise     -> -log p(y_t | x)                          (likelihood)
  L_N = 1/2 * (Align-N mean NLL + Misalign mean over tokens)
For a positive response: Align-P, the NLL of y under x.
"""

from __future__ import annotations

import numpy as np
import torch

from alignloop.policies.objectives.base import Context, Example, Objective, TrainBatch, sequence_mean
from alignloop.policies.objectives.options import CUTOptions
from alignloop.records import Message, merge_metrics

EPS = 1e-5  # inside the log of 1 - p, which is 0 when p rounds to 1


def judgment_messages(example: Example, template: str, judgment: str) -> list[Message]:
    """The prompt with its last user turn rewritten to carry the judgment."""
    messages = list(example.prompt.messages)
    content = template.format(instruction=example.prompt.instruction, judgment=judgment)
    last = max(i for i, m in enumerate(messages) if m.role == "user")
    messages[last] = Message(role="user", content=content)
    return messages


def inappropriate_tokens(batch: TrainBatch, options: CUTOptions) -> torch.Tensor:
    """(B, T) 1.0 where a negative's token is one its judgment blames. `detection` says how:
    ratio  p(y_t | x, j) / p(y_t | x) > lambda, compared without gradient (the paper's);
    spans  the token lies in a span the judge marked (batch.span_mask);
    auto   spans for rows whose judgment has them, the ratio for the others.
    With token_detection off (the paper's ablation) every token of a negative counts."""
    mask, neg = batch.mask, batch.negative  # (B, T), (B,)
    # CUT declares both contexts and `negative`, so the learner always fills them
    assert neg is not None and batch.plain is not None and batch.judged is not None
    if not options.token_detection:
        return mask * neg[:, None]
    by_ratio = ((batch.judged - batch.plain).detach().exp() > options.threshold).float()
    if options.detection == "ratio":
        detected = by_ratio
    else:
        by_spans = batch.span_mask if batch.span_mask is not None else torch.zeros_like(mask)
        with_spans = batch.has_spans if batch.has_spans is not None else torch.zeros_like(neg)
        use_ratio = (1 - with_spans) if options.detection == "auto" else torch.zeros_like(neg)
        detected = by_spans * with_spans[:, None] + by_ratio * use_ratio[:, None]
    return detected * mask * neg[:, None]


def detection_metrics(batch: TrainBatch, inappropriate: torch.Tensor, options: CUTOptions) -> dict[str, float]:
    """Which source decided detection and how much it marked; where spans exist, how the
    paper's ratio agrees with them (its precision and recall against the judged spans).
    cut_negatives_with_spans counts the negatives trained on whose spans map onto their
    tokens; the judge's own judged_negatives_with_spans counts every negative judgment."""
    mask, neg = batch.mask, batch.negative
    if batch.has_spans is None:
        return {}
    # needs_spans fills span_mask together with has_spans; the contexts and `negative` always
    assert neg is not None and batch.span_mask is not None
    assert batch.plain is not None and batch.judged is not None
    spans_rows = neg * batch.has_spans  # (B,)
    out = {"cut_negatives_with_spans": (spans_rows.sum() / neg.sum().clamp(min=1)).item()}
    for source, rows in (("spans", spans_rows), ("ratio", neg * (1 - batch.has_spans))):
        tokens = mask * rows[:, None]
        if tokens.sum() > 0:
            out[f"detected_fraction_{source}"] = ((inappropriate * tokens).sum() / tokens.sum()).item()
    tokens = mask * spans_rows[:, None]
    if tokens.sum() > 0:
        by_ratio = ((batch.judged - batch.plain).detach().exp() > options.threshold).float()
        truth = batch.span_mask * tokens
        hit = (by_ratio * truth).sum()
        out["ratio_precision_vs_spans"] = (hit / (by_ratio * tokens).sum().clamp(min=1)).item()
        out["ratio_recall_vs_spans"] = (hit / truth.sum().clamp(min=1)).item()
    return out


def cut_loss(batch: TrainBatch, options: CUTOptions) -> tuple[torch.Tensor, dict[str, float]]:
    """batch.negative (B,) is 1.0 for negatives; batch.plain and batch.judged (B, T)."""
    mask, neg = batch.mask, batch.negative  # (B, T), (B,)
    lp_plain, lp_judged = batch.plain, batch.judged  # (B, T)
    assert neg is not None and lp_plain is not None and lp_judged is not None  # declared by CUT
    inappropriate = inappropriate_tokens(batch, options)  # (B, T)
    p_plain = lp_plain.exp()
    weight: float | torch.Tensor = options.unlikelihood_weight
    if options.dynamic_gamma is not None:
        weight = weight * lp_judged.detach().exp().pow(options.dynamic_gamma)  # alpha * p(y_t|x,j)^gamma
    unlikelihood = -weight * torch.log(1 - p_plain + EPS)  # (B, T)
    misalign = torch.where(inappropriate.bool(), unlikelihood, -lp_plain)  # (B, T)
    align_n = -sequence_mean(lp_judged, mask)  # (B,)
    negative_loss = 0.5 * (align_n + sequence_mean(misalign, mask))  # (B,)
    positive_loss = -sequence_mean(lp_plain, mask)  # (B,) Align-P
    per_row = torch.where(neg.bool(), negative_loss, positive_loss)
    neg_tokens = (mask * neg[:, None]).sum()
    return per_row.mean(), merge_metrics(
        {
            "detected_fraction": (inappropriate.sum() / neg_tokens.clamp(min=1)).item(),
            "unlikelihood_part": ((unlikelihood * inappropriate).sum() / neg_tokens.clamp(min=1)).item(),
            "likelihood_part": (-(lp_plain * mask * (1 - inappropriate)).sum() / mask.sum().clamp(min=1)).item(),
            "align_n_nll": (align_n * neg).sum().item() / max(1.0, neg.sum().item()),
        },
        detection_metrics(batch, inappropriate, options),
    )


class CUT(Objective):
    contexts = ("plain", "judged")
    row_values = ("negative",)
    needs_spans = True

    def select(self, examples: list[Example], rng: np.random.Generator):
        negatives = [e for e in examples if e.judgment.verdict == "negative" and e.judgment.critique]
        positives = [e for e in examples if e.judgment.verdict == "positive"]
        if self.options.downsample is not None:
            keep = min(len(positives), int(self.options.downsample * len(negatives)))
            positives = [positives[i] for i in sorted(rng.choice(len(positives), keep, replace=False))]
        for e in negatives:
            e.negative = True
        for e in positives:
            e.negative = False
        no_critique = sum(e.judgment.verdict == "negative" and not e.judgment.critique for e in examples)
        return negatives + positives, {
            "n_train": len(negatives) + len(positives),
            "n_negative": len(negatives),
            "n_positive": len(positives),
            "n_negative_without_critique": no_critique,
        }

    def context_messages(self, context: Context, example: Example):
        if context == "judged":
            if not example.negative:
                return None  # a positive is only scored under the plain prompt
            # select() keeps only the negatives that carry a critique
            assert example.judgment.critique is not None
            return judgment_messages(example, self.options.judgment_template, example.judgment.critique)
        return super().context_messages(context, example)

    def loss(self, batch: TrainBatch):
        return cut_loss(batch, self.options)
