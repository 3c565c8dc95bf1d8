"""The config block of every built-in objective, keyed on `type`.

These live apart from the loss code on purpose: `alignloop run --dry-run` and every config
error must answer without importing torch, and the loss modules import it at the top.
To add an objective: a class here, its entry in `ObjectiveConfig`, its file, and its line in
`registry.py`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_JUDGMENT_TEMPLATE = (
    "{instruction}\n\nWrite a response that matches the following judgment of it.\nJudgment: {judgment}"
)


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


ObjectiveConfig = Annotated[
    SFTOptions
    | CUTOptions
    | HindsightOptions
    | ReinforceOptions
    | RLOOOptions
    | GRPOOptions
    | PPOOptions
    | DPOOptions
    | RWROptions,
    Field(discriminator="type"),
]
