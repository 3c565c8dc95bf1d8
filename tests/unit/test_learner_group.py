"""Learner ranks without processes: how a micro-batch is split over the ranks, what each
objective averages over (the count that weighs each rank's part), and the config."""

from __future__ import annotations

import pytest
import torch

from alignloop.loop.config import validate_config
from alignloop.policies.distributed import balance
from alignloop.policies.objectives.grpo import GRPO
from alignloop.policies.objectives.options import GRPOOptions, PPOOptions, SFTOptions
from alignloop.policies.objectives.ppo import PPO
from alignloop.policies.objectives.sft import FilteredSFT
from alignloop.records.errors import ConfigError


def test_balance_splits_every_index_once_and_evens_the_cost():
    costs = [9, 1, 1, 1, 4, 4, 2, 2]
    parts = balance(costs, 2)
    assert sorted(i for p in parts for i in p) == list(range(8))
    assert [sum(costs[i] for i in p) for p in parts] == [12, 12]
    assert all(p == sorted(p) for p in parts), "each part keeps the rows' order"


def test_balance_is_the_same_call_after_call_and_leaves_spare_ranks_empty():
    assert balance([3, 3, 3], 2) == balance([3, 3, 3], 2) == [[0, 2], [1]]  # ties go to the lower rank
    assert balance([5], 3) == [[0], [], []]
    assert balance([], 2) == [[], []]


MASK = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])  # (B=2, T=3): 5 response tokens


@pytest.mark.parametrize(
    "objective, count",
    [
        (FilteredSFT(SFTOptions()), 2.0),  # a mean over rows of each response's mean
        (GRPO(GRPOOptions()), 2.0),
        (GRPO(GRPOOptions(average="token")), 5.0),  # DAPO: a mean over the micro-batch's tokens
        (PPO(PPOOptions()), 5.0),
    ],
)
def test_each_objective_says_what_its_loss_averages_over(objective, count):
    assert objective.averages_over(MASK) == count


def test_one_rank_is_the_default_and_ranks_place_packed_unless_asked():
    base = {
        "name": "t",
        "data": {"path": "x"},
        "model": {"path": "m"},
        "judge": {"type": "rules", "checks": [{"type": "finished"}]},
    }
    cfg = validate_config(base)
    assert (cfg.learner.ranks, cfg.learner.placement) == (1, "pack")
    spread = validate_config({**base, "learner": {"ranks": 2, "placement": "spread"}})
    assert (spread.learner.ranks, spread.learner.placement) == (2, "spread")
    with pytest.raises(ConfigError, match="set learner.ranks to 2 or more"):
        validate_config({**base, "learner": {"shard_base": True}})
    assert validate_config({**base, "learner": {"ranks": 2, "shard_base": True}}).learner.shard_base


def test_the_learner_group_satisfies_the_learner_role():
    from alignloop.loop.roles import protocols
    from alignloop.loop.roles.ray_roles import LearnerGroup
    from tests.unit.test_roles import test_implementation_satisfies_protocol

    test_implementation_satisfies_protocol(protocols.LearnerRole, LearnerGroup)


def test_the_in_process_roles_refuse_several_ranks_rather_than_train_one():
    from alignloop.loop.roles.local import LocalRoles

    base = {"name": "t", "data": {"path": "x"}, "model": {"path": "m"}, "judge": {"type": "rules", "checks": []}}
    base["judge"]["checks"] = [{"type": "finished"}]
    with pytest.raises(ValueError, match="learner.ranks is 2, but the in-process roles hold one learner"):
        LocalRoles(validate_config({**base, "learner": {"ranks": 2}}))
