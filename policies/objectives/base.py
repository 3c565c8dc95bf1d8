"""What every objective is: a selection of training rows, the contexts it needs log-probs
under, and a pure loss over a typed batch.

The learner reads the class attributes below and supplies what they ask for; it never looks
at an objective's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from alignloop.records import Judgment, Message, Prompt, Sample


@dataclass
class Example:
    """One training row: a response with its prompt and judgment, plus per-row numbers the
    objective computed over the whole iteration (an advantage, a pair role, ...)."""

    prompt: Prompt
    sample: Sample
    judgment: Judgment
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainBatch:
    """Tensors for one micro-batch of B rows; T = longest response in it, right-padded.

    logprobs[ctx]  (B, T) log pi(y_t | y_<t, context ctx), with grad, for each declared context
    mask           (B, T) 1.0 on response tokens (end-of-turn included), 0.0 on padding
    values[name]   (B,)   the per-row numbers from Example.values
    ref_logprobs   (B, T) under the reference policy (adapter disabled), when needs_reference
    old_logprobs   (B, T) under the policy that sampled, when needs_old_logprobs
    span_mask      (B, T) 1.0 on tokens a judged span covers, when needs_spans
    has_spans      (B,)   1.0 where the row's judgment gave spans that map onto its tokens
    """

    logprobs: dict[str, torch.Tensor]
    mask: torch.Tensor
    values: dict[str, torch.Tensor]
    ref_logprobs: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    span_mask: torch.Tensor | None = None
    has_spans: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.mask.shape[0]


class Objective:
    contexts: ClassVar[tuple[str, ...]] = ("plain",)
    needs_reference: ClassVar[bool] = False
    needs_old_logprobs: ClassVar[bool] = False
    needs_spans: ClassVar[bool] = False  # map judgment spans onto the response tokens
    # Rows move in units of this many (2 for a chosen/rejected pair), so a minibatch never
    # splits a unit.
    unit: ClassVar[int] = 1

    def __init__(self, options):
        self.options = options

    def select(self, examples: list[Example], rng: np.random.Generator) -> tuple[list[Example], dict]:
        """The rows this iteration trains on (only judged rows with a signal reach here)."""
        raise NotImplementedError

    def context_messages(self, context: str, example: Example) -> list[Message] | None:
        """The chat that row `example` is scored under in `context`; None when this row does
        not need that context (its log-probs then read as 0 and cost no compute)."""
        if context == "plain":
            return list(example.prompt.messages)
        raise KeyError(f"{type(self).__name__} declares context {context!r} but does not render it")

    def loss(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,): each row's mean over its own response tokens."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
