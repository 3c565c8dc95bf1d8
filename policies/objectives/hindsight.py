"""Hindsight baseline (CUT paper): maximum likelihood on [instruction, judgment] -> response for
every judged response, positive or negative. It teaches the model to follow judgments, not
to avoid what they criticise — which is why it barely moves the plain-prompt policy."""

from __future__ import annotations

import numpy as np

from alignloop.policies.objectives.base import Context, Example, Objective, TrainBatch
from alignloop.policies.objectives.cut import judgment_messages
from alignloop.policies.objectives.sft import nll_loss

PERFECT = "The response is perfect."  # for a positive whose judge gave no critique


class Hindsight(Objective):
    contexts = ("judged",)

    def select(self, examples: list[Example], rng: np.random.Generator):
        rows = [e for e in examples if e.judgment.critique or e.judgment.verdict == "positive"]
        return rows, {"n_train": len(rows), "n_without_judgment": len(examples) - len(rows)}

    def context_messages(self, context: Context, example: Example):
        if context == "judged":
            text = example.judgment.critique or PERFECT
            return judgment_messages(example, self.options.judgment_template, text)
        return super().context_messages(context, example)

    def loss(self, batch: TrainBatch):
        assert batch.judged is not None  # declared in `contexts`
        return nll_loss(batch.judged, batch.mask)
