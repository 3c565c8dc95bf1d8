from __future__ import annotations

import numpy as np
import pytest
import torch

from alignloop.policies.objectives.base import Example, TrainBatch
from alignloop.policies.objectives.options import SFTOptions
from alignloop.policies.objectives.registry import build_objective
from alignloop.policies.objectives.sft import sft_loss
from alignloop.records import Judgment, Message, Prompt, Sample


def test_sft_loss_by_hand():
    """Row 0: tokens with log-probs -1, -2        -> mean NLL 1.5
    Row 1: one pad position (log-prob 0, masked) and -0.5 -> mean NLL 0.5
    Loss = mean over rows = (1.5 + 0.5) / 2 = 1.0 — padding counts for nothing."""
    batch = TrainBatch(
        plain=torch.tensor([[-1.0, -2.0], [-7.0, -0.5]]),
        mask=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
    )
    loss, metrics = sft_loss(batch)
    assert loss.item() == pytest.approx(1.0)
    assert metrics["nll"] == pytest.approx(1.0)


def example(pid, i, verdict, score):
    p = Prompt(id=pid, messages=[Message(role="user", content="q")])
    s = Sample(id=f"{pid}#{i}", prompt_id=pid, response="r", policy_version=0)
    return Example(p, s, Judgment(sample_id=s.id, verdict=verdict, score=score, judge="t"))


def test_filtered_sft_keeps_positives_only():
    rows = [example("a", 0, "positive", 1.0), example("a", 1, "negative", 0.5), example("b", 0, "negative", 0.0)]
    keep, m = build_objective(SFTOptions()).select(rows, np.random.default_rng(0))
    assert [e.sample.id for e in keep] == ["a#0"] and m == {"n_train": 1, "n_rejected": 2}


def test_min_score_admits_high_scores():
    rows = [example("a", 0, "negative", 0.75), example("a", 1, "negative", 0.5)]
    keep, _ = build_objective(SFTOptions(min_score=0.7)).select(rows, np.random.default_rng(0))
    assert [e.sample.id for e in keep] == ["a#0"]


def test_best_of_n_keeps_each_prompts_best_whatever_its_verdict():
    rows = [
        example("a", 0, "negative", 0.2),
        example("a", 1, "negative", 0.6),
        example("a", 2, "negative", 0.6),
        example("b", 0, "positive", 1.0),
        example("b", 1, "negative", 0.0),
    ]
    keep, _ = build_objective(SFTOptions(best_of_n=True)).select(rows, np.random.default_rng(0))
    assert [e.sample.id for e in keep] == ["a#1", "b#0"]
