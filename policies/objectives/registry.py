"""Objective name -> class, and `build_objective(options)` for the learner."""

from __future__ import annotations

from alignloop.policies.objectives.base import Objective
from alignloop.policies.objectives.cut import CUT
from alignloop.policies.objectives.dpo import DPO
from alignloop.policies.objectives.grpo import GRPO
from alignloop.policies.objectives.hindsight import Hindsight
from alignloop.policies.objectives.ppo import PPO
from alignloop.policies.objectives.reinforce import Reinforce
from alignloop.policies.objectives.rloo import RLOO
from alignloop.policies.objectives.routing import Routed
from alignloop.policies.objectives.rwr import RWR
from alignloop.policies.objectives.self_distill import SelfDistill
from alignloop.policies.objectives.sft import FilteredSFT

OBJECTIVES: dict[str, type[Objective]] = {
    "sft": FilteredSFT,
    "cut": CUT,
    "hindsight": Hindsight,
    "reinforce": Reinforce,
    "rloo": RLOO,
    "grpo": GRPO,
    "ppo": PPO,
    "dpo": DPO,
    "rwr": RWR,
    "self_distill": SelfDistill,
    "routed": Routed,
}


def build_objective(options) -> Objective:
    return OBJECTIVES[options.type](options)
