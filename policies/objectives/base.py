"""What every objective is: a selection of training rows, the contexts it needs log-probs
under, and a pure loss over a typed batch.

The learner reads the class attributes below and supplies what they ask for; it never looks
at an objective's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import numpy as np
import torch

from alignloop.records import Judgment, Message, Prompt, Sample

# The contexts a response can be scored under; each is a TrainBatch field of the same name.
Context = Literal["plain", "judged"]
# The per-row numbers an objective can fix in select(); each is an Example field and a
# TrainBatch field of the same name.
RowValue = Literal["advantage", "negative", "chosen", "gap", "weight", "route"]


@dataclass
class Example:
    """One training row: a response with its prompt and judgment, plus the per-row numbers an
    objective fixes over the whole iteration in select() (None: not set for this row)."""

    prompt: Prompt
    sample: Sample
    judgment: Judgment
    advantage: float | None = None  # RL objectives: reward minus its baseline (advantages.py)
    negative: bool | None = None  # CUT: trained as a negative (True) or as a positive (False)
    chosen: bool | None = None  # DPO: the chosen (True) or the rejected (False) side of its pair
    gap: float | None = None  # DPO: the pair's reward gap, chosen minus rejected
    weight: float | None = None  # RWR: exp(r / beta), rescaled to mean 1 over the iteration
    route: int | None = None  # routed: the index of the route this row trains in (routing.py)


@dataclass(frozen=True)
class TrainBatch:
    """Tensors for one micro-batch of B rows; T = longest response in it, right-padded.

    Every field but the mask is None unless the objective declares it: a context in
    `contexts`, a per-row value in `row_values`, or a `needs_*` flag."""

    mask: torch.Tensor  # (B, T) 1.0 on response tokens (end-of-turn included), 0.0 on padding
    # log pi(y_t | y_<t, context), with grad; 0 on a row that does not need the context
    plain: torch.Tensor | None = None  # (B, T) under the prompt as sampled
    judged: torch.Tensor | None = None  # (B, T) under the prompt rewritten to carry the judgment
    ref_logprobs: torch.Tensor | None = None  # (B, T) reference policy (adapter disabled): needs_reference
    old_logprobs: torch.Tensor | None = None  # (B, T) the policy that sampled: needs_old_logprobs
    span_mask: torch.Tensor | None = None  # (B, T) 1.0 on tokens a judged span covers: needs_spans
    has_spans: torch.Tensor | None = None  # (B,) 1.0 where the judgment's spans map onto the tokens: needs_spans
    # The Example fields of the same name, as float tensors
    advantage: torch.Tensor | None = None  # (B,)
    negative: torch.Tensor | None = None  # (B,) 1.0 for negatives, 0.0 for positives
    chosen: torch.Tensor | None = None  # (B,) 1.0 for the chosen row of a pair, 0.0 for the rejected
    gap: torch.Tensor | None = None  # (B,)
    weight: torch.Tensor | None = None  # (B,)
    route: torch.Tensor | None = None  # (B,)

    @property
    def size(self) -> int:
        return self.mask.shape[0]


class Objective:
    contexts: ClassVar[tuple[Context, ...]] = ("plain",)
    row_values: ClassVar[tuple[RowValue, ...]] = ()  # what loss() reads of the values select() set
    # Contexts read only as a target (a teacher): the learner scores them without gradient, in a
    # forward pass of their own, so the backward pass does not run through them.
    detached_contexts: ClassVar[tuple[Context, ...]] = ()
    needs_reference: ClassVar[bool] = False
    needs_old_logprobs: ClassVar[bool] = False
    needs_spans: ClassVar[bool] = False  # map judgment spans onto the response tokens
    # Rows move in units of this many (2 for a chosen/rejected pair), so a minibatch never
    # splits a unit.
    unit: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs):
        """A misspelt declaration fails when the objective is defined, not mid-run."""
        super().__init_subclass__(**kwargs)
        for name, allowed in (("contexts", Context), ("detached_contexts", Context), ("row_values", RowValue)):
            unknown = [v for v in getattr(cls, name) if v not in get_args(allowed)]
            if unknown:
                raise TypeError(f"{cls.__name__}.{name} has {unknown}; known: {list(get_args(allowed))}")

    def __init__(self, options):
        self.options = options

    def select(self, examples: list[Example], rng: np.random.Generator) -> tuple[list[Example], dict]:
        """The rows this iteration trains on (only judged rows with a signal reach here)."""
        raise NotImplementedError

    def context_messages(self, context: Context, example: Example) -> list[Message] | None:
        """The chat that row `example` is scored under in `context`; None when this row does
        not need that context (its log-probs then read as 0 and cost no compute)."""
        if context == "plain":
            return list(example.prompt.messages)
        raise KeyError(f"{type(self).__name__} declares context {context!r} but does not render it")

    def row_tensors(self, rows: list[Example], device=None) -> dict[RowValue, torch.Tensor]:
        """(B,) float tensor of each declared per-row value, keyed by its TrainBatch field."""
        out = {}
        for name in self.row_values:
            values = [getattr(e, name) for e in rows]
            if None in values:
                e = rows[values.index(None)]
                raise ValueError(
                    f"{type(self).__name__} reads {name!r} but row {e.sample.id} has none: "
                    "select() must set it on every row it returns"
                )
            out[name] = torch.tensor([float(v) for v in values], device=device)
        return out

    def loss(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def averages_over(self, mask: torch.Tensor) -> float:
        """What loss() averages over in a micro-batch with this (B, T) mask: its rows (each
        response weighs the same; the default) or its tokens. A learner that splits a
        micro-batch over ranks weighs each part's loss by its share of this count, so the sum
        equals the loss of the whole micro-batch."""
        return float(mask.shape[0])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,): each row's mean over its own response tokens."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
