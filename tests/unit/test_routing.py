"""Per-sample routing: the mixed loss by hand, what each route selects (on its own copies of
the rows), the split over ranks, the config's refusals, and the learner with routes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignloop.loop.config import validate_config
from alignloop.policies.objectives.base import Example, TrainBatch
from alignloop.policies.objectives.options import RoutedOptions
from alignloop.policies.objectives.routing import Routed, route_batch
from alignloop.records import Judgment, Message, Prompt, Sample
from alignloop.records.errors import ConfigError

L = math.log


def routed(*routes: dict) -> Routed:
    return Routed(RoutedOptions(routes=list(routes)))


SFT_AND_REINFORCE = (
    {"objective": {"type": "sft"}, "rows": "positives"},
    {"objective": {"type": "reinforce"}, "rows": "scored", "weight": 0.5},
)


def hand_batch() -> TrainBatch:
    def t(x):
        return torch.tensor(x, dtype=torch.float64)

    return TrainBatch(
        plain=t([[L(0.5), L(0.5)], [L(0.5), L(0.25)], [0.0, L(0.5)]]),
        mask=t([[1, 1], [1, 1], [0, 1]]),
        advantage=t([0.0, 1.0, -0.5]),
        route=t([0, 1, 1]),
    )


def test_routed_loss_by_hand():
    """Row 0 in route sft: NLL = -log 0.5 = 0.693147.
    Rows 1, 2 in route reinforce (weight 0.5): log pi = log 0.125 = -2.079442 with A = 1 -> 2.079442;
    log pi = log 0.5 with A = -0.5 -> -0.346574; its loss, a mean over its rows, 0.866434.
    L = (1/3) (1 * 1 * 0.693147 + 0.5 * 2 * 0.866434) = 0.519860."""
    loss, m = routed(*SFT_AND_REINFORCE).loss(hand_batch())
    assert loss.item() == pytest.approx(0.519860, abs=1e-6)
    assert m["sft/loss"] == pytest.approx(0.693147, abs=1e-6)
    assert m["reinforce/loss"] == pytest.approx(0.866434, abs=1e-6)
    assert m["reinforce/seq_logprob"] == pytest.approx((-2.079442 - 0.693147) / 2, abs=1e-6)


def test_the_loss_of_a_batch_is_its_parts_weighted_by_their_rows():
    """What learner ranks rely on: each rank's part weighs len(part) / B (averages_over counts
    rows), and the weighted parts sum to the loss of the whole micro-batch."""
    obj, b = routed(*SFT_AND_REINFORCE), hand_batch()
    assert obj.averages_over(b.mask) == 3.0
    whole = obj.loss(b)[0].item()
    parts = [torch.tensor([0, 2]), torch.tensor([1])]
    split = sum(obj.loss(route_batch(b, rows))[0].item() * len(rows) / 3 for rows in parts)
    assert split == pytest.approx(whole, abs=1e-12)


def example(i: int, verdict: str, score: float, critique: str | None = None) -> Example:
    p = Prompt(id="p0", messages=[Message(role="user", content="q")])
    s = Sample(id=f"s{i}", prompt_id="p0", response=f"r{i}", policy_version=0)
    return Example(p, s, Judgment(sample_id=s.id, verdict=verdict, score=score, critique=critique, judge="t"))


def test_each_route_selects_from_its_rows_on_its_own_copies():
    rows = [example(0, "positive", 1.0), example(1, "negative", 0.0, "Too long."), example(2, "negative", 0.5)]
    obj = routed(
        *SFT_AND_REINFORCE,
        {"objective": {"type": "self_distill", "positives": "none"}, "rows": "negatives_with_critique"},
    )
    chosen, m = obj.select(rows, np.random.default_rng(0))
    # sft: the positive; reinforce: the scored rows with a nonzero advantage (mean 0.5); self_distill: s1
    assert [(e.sample.id, e.route) for e in chosen] == [("s0", 0), ("s0", 1), ("s1", 1), ("s1", 2)]
    assert [e.advantage for e in chosen] == [None, 0.5, -0.5, None]
    assert [e.negative for e in chosen] == [None, None, None, True]
    assert all(e.advantage is None and e.route is None for e in rows), "the caller's rows are left as they were"
    assert m["n_train"] == 4 and (m["sft/rows"], m["reinforce/rows"], m["self_distill/rows"]) == (1, 2, 1)
    assert m["self_distill/n_negative"] == 1 and m["reinforce/n_train"] == 2
    tensors = obj.row_tensors(chosen)
    assert tensors["route"].tolist() == [0, 1, 1, 2]
    assert tensors["advantage"].tolist() == [0.0, 0.5, -0.5, 0.0] and tensors["negative"].tolist() == [0, 0, 0, 1]
    assert obj.contexts == ("plain", "judged") and obj.detached_contexts == ("judged",)
    assert obj.context_messages("judged", chosen[2]) is None, "reinforce scores no judged context"
    assert "Too long." in obj.context_messages("judged", chosen[3])[-1].content
    with_cut = routed({"objective": {"type": "cut"}}, {"objective": {"type": "self_distill"}})
    assert with_cut.detached_contexts == (), "CUT trains through the judged context"
    assert with_cut.needs_spans and not routed({"objective": {"type": "self_distill"}}).needs_spans


BASE = {
    "name": "t",
    "data": {"path": "x"},
    "model": {"path": "m"},
    "judge": {"type": "rules", "checks": [{"type": "finished"}]},
}


@pytest.mark.parametrize(
    "routes, message",
    [
        ([{"objective": {"type": "grpo", "average": "token"}}], "set average: sequence"),
        ([{"objective": {"type": "dpo"}}], "'dpo' is not known"),
        ([{"objective": {"type": "sft"}}, {"objective": {"type": "sft"}, "rows": "positives"}], "distinct name"),
        ([{"objective": {"type": "sft"}, "rows": "scored_twice"}], "rows"),
        ([{"objective": {"type": "sft"}, "weight": 0}], "greater than 0"),
        ([], "at least 1"),
    ],
)
def test_config_refuses(routes, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({**BASE, "learner": {"objective": {"type": "routed", "routes": routes}}})


def test_a_route_that_compares_samples_needs_several_per_prompt():
    learner = {
        "objective": {"type": "routed", "routes": [{"objective": {"type": "sft"}}, {"objective": {"type": "grpo"}}]}
    }
    with pytest.raises(ConfigError, match="compares the samples of each prompt"):
        validate_config({**BASE, "sampler": {"samples_per_prompt": 1}, "learner": learner})
    named = {"objective": {"type": "sft"}, "name": "pos"}
    cfg = validate_config({**BASE, "learner": {"objective": {"type": "routed", "routes": [named]}}})
    assert cfg.learner.objective.routes[0].label == "pos"


def learner_for(tiny_model, objective: dict):
    from alignloop.policies.learner import Learner

    cfg = validate_config(
        {
            **BASE,
            "model": {
                "path": str(tiny_model),
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "learner": {
                "lr": 1e-2,
                "minibatch_size": 4,
                "micro_batch_size": 2,
                "threads": 1,
                "schedule": "constant",
                "objective": objective,
            },
        }
    )
    return Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)


def tiny_rows(learner) -> list[Example]:
    prompt = Prompt(id="p0", messages=[Message(role="user", content="the cat sat")])
    rows = []
    for i, (text, verdict) in enumerate(
        [("yes the sun", "positive"), ("no", "negative"), ("the big red dog ran", "negative"), ("a cat", "positive")]
    ):
        ids = learner.tokenizer(text, add_special_tokens=False)["input_ids"] + [learner.tokenizer.eos_token_id]
        s = Sample(id=f"s{i}", prompt_id="p0", response=text, policy_version=0, token_ids=ids)
        critique = "Say yes." if verdict == "negative" else None
        rows.append(Example(prompt, s, Judgment(sample_id=s.id, verdict=verdict, critique=critique, judge="t")))
    return rows


def test_one_route_of_weight_one_learns_as_its_objective_alone(tiny_model):
    alone = learner_for(tiny_model, {"type": "sft"})
    one = learner_for(tiny_model, {"type": "routed", "routes": [{"objective": {"type": "sft"}}]})
    for it in (1, 2):
        a, b = alone.learn(tiny_rows(alone), iteration=it), one.learn(tiny_rows(one), iteration=it)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["sft/loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["sft/n_train"] == a["n_train"] == 2


def test_the_learner_trains_each_route_on_its_rows(tiny_model):
    """SFT on the positives and self-distillation on the critiqued negatives in one iteration;
    micro-batches of 2 rows, so a micro-batch may hold one route only: each route's metrics
    are its own rows' (a route's loss is positive, never diluted toward 0 by micro-batches
    without its rows)."""
    objective = {
        "type": "routed",
        "routes": [
            {"objective": {"type": "sft"}, "rows": "positives"},
            {"objective": {"type": "self_distill", "positives": "none"}, "rows": "negatives_with_critique"},
        ],
    }
    learner = learner_for(tiny_model, objective)
    rows = tiny_rows(learner)
    m = learner.learn(rows, iteration=1)
    assert (m["n_train"], m["sft/rows"], m["self_distill/rows"], m["self_distill/n_negative"]) == (4, 2, 2, 2)
    nll = -learner.batch(learner.objective.select(rows, np.random.default_rng(0))[0][:1]).plain.sum().item()
    for it in range(2, 5):
        m = learner.learn(rows, iteration=it)
    assert m["sft/loss"] > 0 and m["self_distill/distill_gap"] > 0
    after = -learner.batch(learner.objective.select(rows, np.random.default_rng(0))[0][:1]).plain.sum().item()
    assert after < nll, "the positives' route raises their likelihood"


def test_a_step_averages_a_route_metric_over_the_micro_batches_that_report_it():
    """Two micro-batches of equal size; the route is in the first only, with loss 0.6: the step
    reports 0.6 for it (not 0.3, as if the second had reported 0), and leaves a metric both
    report exactly as summed."""
    from alignloop.policies.learner import over_reporting

    got = over_reporting({"loss": 0.25 + 0.35, "sft/loss": 0.6 * 0.5}, {"loss": 1.0, "sft/loss": 0.5})
    assert got == {"loss": 0.6, "sft/loss": pytest.approx(0.6)}
    assert over_reporting({"x": 0.1 + 0.2}, {"x": 0.5 + 0.5})["x"] == 0.1 + 0.2
