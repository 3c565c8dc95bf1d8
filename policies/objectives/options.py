"""The config block of every built-in objective, keyed on `type`.

These live apart from the loss code on purpose: `alignloop run --dry-run` and every config
error must answer without importing torch, and the loss modules import it at the top.
To add an objective: a class here, its entry in `ObjectiveConfig`, its file, and its line in
`registry.py`.
"""

from __future__ import annotations

from string import Formatter
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_JUDGMENT_TEMPLATE = (
    "{instruction}\n\nWrite a response that matches the following judgment of it.\nJudgment: {judgment}"
)


# The teacher's context in self-distillation: the policy told what was wrong with an earlier
# attempt and asked to do better (a context that "matches the judgment", as CUT's, would make
# the teacher explain the flaw, and distilling from it would teach the flaw).
# The teacher reads the judgment, not the sampled response: with the response in its context a
# small model copies it, so the teacher is surer of every sampled token than the student and
# distilling pushes the failed response up (docs/objectives.md#self-distillation-from-judgments).
DEFAULT_TEACHER_TEMPLATE = (
    "{instruction}\n\nA reviewer judged an earlier response to this as follows: {judgment}\n\n"
    "Write a response that avoids the problems the judgment names."
)


def template_fields(template: str, allowed: set[str]) -> str:
    """A prompt template whose {fields} are all in `allowed` (checked at config time, not mid-run)."""
    names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    unknown = sorted(names - allowed)
    if unknown:
        raise ValueError(f"template has {unknown}; it may use {sorted(allowed)} (write {{{{ and }}}} for braces)")
    return template


class ObjectiveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Objectives that compare the samples of one prompt learn nothing from a single sample.
    min_samples_per_prompt: ClassVar[int] = 1


class SFTOptions(ObjectiveOptions):
    """Filtered SFT: maximum likelihood on the responses the judge accepted."""

    type: Literal["sft"] = "sft"
    min_score: float | None = Field(
        None, description="Also keep samples with score >= this (None: use the verdict only)."
    )
    best_of_n: bool = Field(
        False, description="Best-of-N: keep each prompt's best-scoring response, whatever its verdict."
    )


class CUTOptions(ObjectiveOptions):
    """Contrastive Unlikelihood Training (Xu et al. 2023): learn from natural-language judgments."""

    type: Literal["cut"] = "cut"
    threshold: float = Field(
        1.1, ge=1.0, description="lambda: a token is inappropriate when p(y_t|x,j)/p(y_t|x) > this."
    )
    unlikelihood_weight: float = Field(1.0, gt=0, description="alpha: weight of -log(1 - p) on inappropriate tokens.")
    downsample: float | None = Field(
        0.25, gt=0, description="Keep at most this x (number of negatives) positives (None: keep all)."
    )
    dynamic_gamma: float | None = Field(
        None, gt=0, description="Paper's dynamic weight alpha * p(y_t|x,j)^gamma (None: off, as the official code)."
    )
    detection: Literal["ratio", "spans", "auto"] = Field(
        "auto",
        description="Which tokens of a negative get unlikelihood. ratio: the paper's p(y_t|x,j)/p(y_t|x) > lambda; "
        "spans: those a judged span covers (none when the judgment gave no spans); auto: spans where given, else ratio.",
    )
    token_detection: bool = Field(
        True, description="False: unlikelihood on every token of a negative (the paper's ablation; it fails)."
    )
    judgment_template: str = Field(
        DEFAULT_JUDGMENT_TEMPLATE, description="User turn of the judgment context; {instruction} and {judgment}."
    )


class HindsightOptions(ObjectiveOptions):
    """Hindsight baseline: MLE on [instruction, judgment] -> response for every response."""

    type: Literal["hindsight"] = "hindsight"
    judgment_template: str = Field(
        DEFAULT_JUDGMENT_TEMPLATE, description="User turn of the judgment context; {instruction} and {judgment}."
    )


class ReinforceOptions(ObjectiveOptions):
    """REINFORCE with a baseline: -(r - mean reward of the iteration) * log pi(y)."""

    type: Literal["reinforce"] = "reinforce"


class RLOOOptions(ObjectiveOptions):
    """RLOO: REINFORCE with the mean reward of the prompt's other k-1 samples as baseline."""

    min_samples_per_prompt: ClassVar[int] = 2
    type: Literal["rloo"] = "rloo"


class GRPOOptions(ObjectiveOptions):
    """GRPO: group-normalised advantages and a clipped importance ratio (no KL term)."""

    min_samples_per_prompt: ClassVar[int] = 2
    type: Literal["grpo"] = "grpo"
    clip_eps: float = Field(
        0.2, gt=0, lt=1, description="epsilon: the ratio pi/pi_old is clipped to [1 - eps, 1 + eps]."
    )
    average: Literal["sequence", "token"] = Field(
        "sequence",
        description="sequence: mean over each response, then over rows (GRPO); token: over all tokens (DAPO).",
    )
    scale_by_std: bool = Field(
        True, description="Divide by the group's reward std (False: Dr. GRPO, mean-centred only)."
    )
    std_eps: float = Field(1e-6, gt=0, description="Added to the std before dividing.")


class PPOOptions(ObjectiveOptions):
    """PPO-clip with a KL penalty to the reference (base model, adapter disabled)."""

    min_samples_per_prompt: ClassVar[int] = 2
    type: Literal["ppo"] = "ppo"
    clip_eps: float = Field(
        0.2, gt=0, lt=1, description="epsilon: the ratio pi/pi_old is clipped to [1 - eps, 1 + eps]."
    )
    kl_coef: float = Field(
        0.05, ge=0, description="beta: weight of the per-token KL(pi || pi_ref) estimate in the loss."
    )


class DPOOptions(ObjectiveOptions):
    """Online DPO / IPO on pairs built per prompt from the judge's scores or verdicts."""

    min_samples_per_prompt: ClassVar[int] = 2
    type: Literal["dpo"] = "dpo"
    loss: Literal["dpo", "ipo"] = Field(
        "dpo", description="dpo: -log sigmoid(beta h); ipo: squared distance of h to a target."
    )
    beta: float = Field(0.1, gt=0, description="beta: DPO's inverse temperature; IPO's regulariser.")
    ipo_target: Literal["paper", "code"] = Field(
        "paper", description="IPO target for h: paper 1/(2 beta); code beta (the understanding-rlhf code)."
    )
    pairs: Literal["best_vs_worst", "all"] = Field(
        "best_vs_worst", description="Per prompt: best against worst response, or every strictly ordered pair."
    )
    min_gap: float = Field(0.0, ge=0, description="Drop pairs whose score gap is below this (verdict pairs: unused).")


class RWROptions(ObjectiveOptions):
    """Reward-weighted regression: -exp(r / beta) * log pi(y), weights normalised per iteration."""

    type: Literal["rwr"] = "rwr"
    beta: float = Field(1.0, gt=0, description="beta: temperature of the weights exp(r / beta).")


class SelfDistillOptions(ObjectiveOptions):
    """Self-distillation from judgments: the policy given the judgment teaches the policy without it."""

    type: Literal["self_distill"] = "self_distill"
    teacher_template: str = Field(
        DEFAULT_TEACHER_TEMPLATE,
        description="User turn of the teacher's context; {instruction}, {judgment} and {response} (the sampled one; "
        "the default leaves it out).",
    )
    positives: Literal["nll", "none"] = Field(
        "nll", description="Positive responses: nll trains their likelihood under the plain prompt; none skips them."
    )
    spans: Literal["ignore", "only", "weight"] = Field(
        "ignore",
        description="The judge's spans: ignore them; only distill the tokens they cover (rows without spans: every "
        "token); or weigh covered tokens span_weight times the others.",
    )
    span_weight: float = Field(4.0, gt=0, description="spans: weight, the weight of a token a span covers.")
    max_gap: float | None = Field(
        None, gt=0, description="Clip the per-token teacher-student log-ratio to +-this (Huber loss; None: squared)."
    )

    @field_validator("teacher_template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        return template_fields(template, {"instruction", "judgment", "response"})


# Which rows of an iteration a route trains on (before its objective's own selection).
RowFilter = Literal["all", "negatives", "negatives_with_critique", "positives", "scored"]


class Route(BaseModel):
    """One part of a routed objective: an objective, the rows it sees, and its weight."""

    model_config = ConfigDict(extra="forbid")
    objective: Annotated[
        SFTOptions
        | CUTOptions
        | HindsightOptions
        | ReinforceOptions
        | RLOOOptions
        | GRPOOptions
        | RWROptions
        | SelfDistillOptions,
        Field(discriminator="type"),
    ] = Field(description="The loss of this route, chosen by `type` (dpo and ppo cannot be routed).")
    rows: RowFilter = Field(
        "all",
        description="The rows it sees: all, negatives, negatives_with_critique, positives, or scored (a score).",
    )
    weight: float = Field(1.0, gt=0, description="Its loss's weight in the iteration's loss.")
    name: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9_]{0,31}$", description="Prefix of its metrics (None: the objective's type)."
    )

    @property
    def label(self) -> str:
        return self.name or self.objective.type

    @model_validator(mode="after")
    def _averages_over_rows(self) -> Route:
        if isinstance(self.objective, GRPOOptions) and self.objective.average == "token":
            raise ValueError(
                "a routed loss is a mean over rows, so each route's must be too: set average: sequence for a routed grpo"
            )
        return self


class RoutedOptions(ObjectiveOptions):
    """Several objectives in one iteration, each on the rows it needs, their losses weighted."""

    type: Literal["routed"] = "routed"
    routes: list[Route] = Field(min_length=1, description="The objectives and the rows each trains on.")

    @property
    def min_samples_per_prompt(self) -> int:  # type: ignore[override]
        return max(r.objective.min_samples_per_prompt for r in self.routes)

    @model_validator(mode="after")
    def _labels_differ(self) -> RoutedOptions:
        labels = [r.label for r in self.routes]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"routes {twice} share a metric prefix: give each a distinct name")
        return self


ObjectiveConfig = Annotated[
    SFTOptions
    | CUTOptions
    | HindsightOptions
    | ReinforceOptions
    | RLOOOptions
    | GRPOOptions
    | PPOOptions
    | DPOOptions
    | RWROptions
    | SelfDistillOptions
    | RoutedOptions,
    Field(discriminator="type"),
]
