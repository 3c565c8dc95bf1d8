"""Judges: the Judge protocol, the built-in backends and `build_judge`.

    rules           judges/rules.py           checks that each say in one sentence what is wrong
    openai          judges/openai_judge.py    any OpenAI-compatible endpoint (retries, cache, cost)
    reward_model    judges/reward_model.py    a local sequence-classification model, score -> verdict
    critique_model  judges/critique_model.py  a local chat model that writes the judgment
    composite       judges/composite.py       several judges: a gate chain, or all combined
    python          judges/plugins.py         your own class, by import path or entry point
    human           judges/human.py           people, on the review page (`alignloop review`)

Every module here imports only pydantic at the top; torch, transformers and openai are
imported when a judge is built, so loading a config stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from alignloop.judges.base import Judge
from alignloop.judges.composite import CompositeJudge, CompositeJudgeConfig
from alignloop.judges.critique_model import CritiqueModelJudge, CritiqueModelJudgeConfig
from alignloop.judges.human import HumanJudge, HumanJudgeConfig
from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from alignloop.judges.plugins import PythonJudgeConfig, build_plugin
from alignloop.judges.reward_model import RewardModelJudge, RewardModelJudgeConfig
from alignloop.judges.rules import RulesJudge, RulesJudgeConfig

# Name -> (config class, judge class or builder). Built-ins only; third-party judges come in
# through `python` (an import path or the `alignloop.judges` entry-point group).
JUDGES: dict[str, tuple[type, Callable]] = {
    "rules": (RulesJudgeConfig, RulesJudge),
    "openai": (OpenAIJudgeConfig, OpenAIJudge),
    "reward_model": (RewardModelJudgeConfig, RewardModelJudge),
    "critique_model": (CritiqueModelJudgeConfig, CritiqueModelJudge),
    "composite": (CompositeJudgeConfig, CompositeJudge),
    "python": (PythonJudgeConfig, build_plugin),
    "human": (HumanJudgeConfig, HumanJudge),
}

JudgeConfig = Annotated[
    RulesJudgeConfig
    | OpenAIJudgeConfig
    | RewardModelJudgeConfig
    | CritiqueModelJudgeConfig
    | CompositeJudgeConfig
    | PythonJudgeConfig
    | HumanJudgeConfig,
    Field(discriminator="type"),
]
# A composite holds judges of any type, itself included.
CompositeJudgeConfig.model_rebuild(_types_namespace={"JudgeConfig": JudgeConfig})
HumanJudgeConfig.model_rebuild(_types_namespace={"JudgeConfig": JudgeConfig})


def preflight_judges(config) -> None:
    """Run every `preflight()` a judge config (or one nested in a composite) defines: what can
    be checked on the driver before any actor starts (a key's variable, an endpoint)."""
    check = getattr(config, "preflight", None)
    if check is not None:
        check()
    for part in getattr(config, "judges", None) or ():
        preflight_judges(part)
    if getattr(config, "other", None) is not None:  # a human judge's other judge
        preflight_judges(config.other)


def build_judge(config) -> Judge:
    _, build = JUDGES[config.type]
    return build(config)


__all__ = ["Judge", "JudgeConfig", "JUDGES", "build_judge", "preflight_judges"]
