"""Self-distillation from judgments: the policy *given the judgment* is the teacher of the
policy without it, token by token on the sampled response (the idea of TRL's experimental
SDPO trainer and prime-rl's on-policy self-distillation; written here from the idea, not
their code). docs/objectives.md#self-distillation says why each choice below.

For a negative response y with a critique j, at every sampled token t:
  student  log s_t = log pi(y_t | x, y_<t)                     (with gradient)
  teacher  log q_t = log pi(y_t | [x, j], y_<t)                (same adapter, no gradient)
  d_t = log s_t - log q_t, the sampled-token log-ratio
  loss_t = d_t^2 / 2  (or the Huber loss of d_t with max_gap: the log-ratio clipped)
  L_N = each row's mean of loss_t over its tokens (weighted by the spans when asked)
The gradient, d_t * grad log s_t, is the per-token policy gradient of the reverse KL
KL(s || q) with the sampled token's log-ratio as its (negated) advantage: where the judgment
makes the teacher less sure of a token the student is pushed off it, where more sure, onto it.
For a positive response: its NLL under x (`positives: nll`), or nothing (`none`).
"""

from __future__ import annotations

import numpy as np
import torch

from alignloop.policies.objectives.base import Context, Example, Objective, TrainBatch, sequence_mean
from alignloop.policies.objectives.options import SelfDistillOptions
from alignloop.records import Message


def teacher_messages(example: Example, template: str) -> list[Message]:
    """The prompt with its last user turn rewritten by `template` to carry the judgment (and the
    sampled response, where the template quotes it), asking for a better one: the teacher's context."""
    assert example.judgment.critique is not None  # select() keeps only negatives with a critique
    messages = list(example.prompt.messages)
    content = template.format(
        instruction=example.prompt.instruction, judgment=example.judgment.critique, response=example.sample.response
    )
    last = max(i for i, m in enumerate(messages) if m.role == "user")
    messages[last] = Message(role="user", content=content)
    return messages


def token_weights(batch: TrainBatch, options: SelfDistillOptions) -> torch.Tensor:
    """(B, T) how much each response token of a row counts in its distillation mean. A row
    whose judgment has no spans (or spans that do not map onto its tokens) weighs every token
    the same whatever the setting: there is nothing to restrict it to."""
    mask = batch.mask
    if options.spans == "ignore":
        return mask
    assert batch.span_mask is not None and batch.has_spans is not None  # needs_spans unless ignored
    covered = batch.span_mask * batch.has_spans[:, None]  # (B, T)
    if options.spans == "only":
        uncovered_row = 1 - batch.has_spans[:, None]  # (B, 1)
        return mask * (covered + uncovered_row).clamp(max=1)
    return mask * (1 + (options.span_weight - 1) * covered)


def self_distill_loss(batch: TrainBatch, options: SelfDistillOptions) -> tuple[torch.Tensor, dict[str, float]]:
    """batch.plain (B, T) is the student, batch.judged (B, T) the teacher (read without
    gradient), batch.negative (B,) 1.0 on the rows distilled, 0.0 on positives."""
    mask, neg = batch.mask, batch.negative
    assert batch.plain is not None and batch.judged is not None and neg is not None  # declared
    gap = batch.plain - batch.judged.detach()  # (B, T) d_t = log s_t - log q_t
    if options.max_gap is None:
        per_token = 0.5 * gap.pow(2)
    else:
        per_token = torch.nn.functional.huber_loss(gap, torch.zeros_like(gap), reduction="none", delta=options.max_gap)
    weights = token_weights(batch, options)  # (B, T)
    distill = (per_token * weights).sum(-1) / weights.sum(-1).clamp(min=1)  # (B,)
    nll = -sequence_mean(batch.plain, mask)  # (B,)
    per_row = torch.where(neg.bool(), distill, nll)
    neg_tokens = mask * neg[:, None]  # (B, T)
    n_neg, n_tok = max(1.0, neg.sum().item()), neg_tokens.sum().clamp(min=1)
    return per_row.mean(), {
        "distill_loss": (distill * neg).sum().item() / n_neg,
        # The teacher-student gap on the sampled tokens: what distillation closes
        "distill_gap": ((gap.detach().abs() * neg_tokens).sum() / n_tok).item(),
        # Mean log q - log s: below 0 when the judgment makes the teacher doubt what was sampled
        "distill_teacher_minus_student": ((-gap.detach() * neg_tokens).sum() / n_tok).item(),
        "positive_nll": (nll.detach() * (1 - neg)).sum().item() / max(1.0, (1 - neg).sum().item()),
    }


class SelfDistill(Objective):
    contexts = ("plain", "judged")
    detached_contexts = ("judged",)
    row_values = ("negative",)

    def __init__(self, options: SelfDistillOptions):
        super().__init__(options)
        # The spans are mapped onto the tokens only when the loss reads them
        self.needs_spans = options.spans != "ignore"  # type: ignore[misc]

    def select(self, examples: list[Example], rng: np.random.Generator):
        negatives = [e for e in examples if e.judgment.verdict == "negative" and e.judgment.critique]
        positives = [e for e in examples if e.judgment.verdict == "positive"] if self.options.positives == "nll" else []
        for e in negatives:
            e.negative = True
        for e in positives:
            e.negative = False
        return negatives + positives, {
            "n_train": len(negatives) + len(positives),
            "n_negative": len(negatives),
            "n_positive": len(positives),
            "n_negative_without_critique": sum(
                e.judgment.verdict == "negative" and not e.judgment.critique for e in examples
            ),
        }

    def context_messages(self, context: Context, example: Example):
        if context == "judged":
            return teacher_messages(example, self.options.teacher_template) if example.negative else None
        return super().context_messages(context, example)

    def loss(self, batch: TrainBatch):
        return self_distill_loss(batch, self.options)
