"""Self-distillation from judgments: the loss against values worked out by hand, the teacher's
context, the selection, and learning on the tiny model (the teacher-student gap shrinks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignloop.loop.config import validate_config
from alignloop.policies.objectives.base import Example, TrainBatch
from alignloop.policies.objectives.options import SelfDistillOptions
from alignloop.policies.objectives.self_distill import SelfDistill, self_distill_loss, teacher_messages
from alignloop.records import Judgment, Message, Prompt, Sample
from alignloop.records.errors import ConfigError

L = math.log


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def batch(**over) -> TrainBatch:
    """Row 0, a negative: student p = 0.5, 0.2; teacher q = 0.25, 0.8.
    Row 1, a positive, one token p = 0.5 and a padded position."""
    fields = dict(
        plain=t([[L(0.5), L(0.2)], [0.0, L(0.5)]], grad=True),
        judged=t([[L(0.25), L(0.8)], [0.0, 0.0]], grad=True),
        mask=t([[1, 1], [0, 1]]),
        negative=t([1, 0]),
    )
    fields.update(over)
    return TrainBatch(**fields)


def test_loss_by_hand_and_the_teacher_gets_no_gradient():
    """d_1 = log 0.5 - log 0.25 = +0.693147 -> d^2/2 = 0.240227
    d_2 = log 0.2 - log 0.8  = -1.386294 -> d^2/2 = 0.960906
    Row 0 = (0.240227 + 0.960906) / 2 = 0.600566; row 1 = -log 0.5 = 0.693147
    Loss = (0.600566 + 0.693147) / 2 = 0.646857.
    d loss / d log s_2 = d_2 * 1/2 (token mean) * 1/2 (row mean) = -0.346574: descent raises the
    token the teacher finds likelier; d / d log s_1 = +0.173287 lowers the one it doubts."""
    b = batch()
    loss, m = self_distill_loss(b, SelfDistillOptions())
    assert loss.item() == pytest.approx(0.646857, abs=1e-6)
    assert m["distill_loss"] == pytest.approx(0.600566, abs=1e-6)
    assert m["distill_gap"] == pytest.approx((0.693147 + 1.386294) / 2, abs=1e-6)
    assert m["distill_teacher_minus_student"] == pytest.approx((-0.693147 + 1.386294) / 2, abs=1e-6)
    assert m["positive_nll"] == pytest.approx(0.693147, abs=1e-6)
    loss.backward()
    assert b.plain.grad[0].tolist() == pytest.approx([0.173287, -0.346574], abs=1e-6)
    assert b.plain.grad[1].tolist() == pytest.approx([0.0, -0.5], abs=1e-6)
    assert b.judged.grad is None or not b.judged.grad.any(), "the teacher is a target, not trained"


def test_spans_restrict_or_weigh_the_tokens_by_hand():
    """A span covers token 2 of row 0.
    only:      row 0 = 0.960906                              loss = (0.960906 + 0.693147) / 2 = 0.827027
    weight 3:  row 0 = (0.240227 + 3 * 0.960906) / 4 = 0.780736  loss = 0.736942
    A row without spans weighs every token alike whatever the setting (loss as with ignore)."""
    spans = dict(span_mask=t([[0, 1], [0, 0]]), has_spans=t([1, 0]))
    only = self_distill_loss(batch(**spans), SelfDistillOptions(spans="only"))[0]
    weigh = self_distill_loss(batch(**spans), SelfDistillOptions(spans="weight", span_weight=3.0))[0]
    assert only.item() == pytest.approx(0.827027, abs=1e-6)
    assert weigh.item() == pytest.approx(0.736942, abs=1e-6)
    none = dict(span_mask=t([[0, 0], [0, 0]]), has_spans=t([0, 0]))
    for spans_mode in ("only", "weight"):
        got = self_distill_loss(batch(**none), SelfDistillOptions(spans=spans_mode))[0]
        assert got.item() == pytest.approx(0.646857, abs=1e-6)


def test_max_gap_clips_the_log_ratio_by_hand():
    """Huber with delta 1: |d_1| = 0.693 < 1 -> 0.240227; |d_2| = 1.386 > 1 -> 1.386294 - 0.5 = 0.886294.
    Row 0 = 0.563261; loss = (0.563261 + 0.693147) / 2 = 0.628204; the gradient on token 2 is
    clipped to -1 * 1/2 * 1/2 = -0.25."""
    b = batch()
    loss, _ = self_distill_loss(b, SelfDistillOptions(max_gap=1.0))
    assert loss.item() == pytest.approx(0.628204, abs=1e-6)
    loss.backward()
    assert b.plain.grad[0, 1].item() == pytest.approx(-0.25)


def test_padding_never_counts():
    a = self_distill_loss(batch(), SelfDistillOptions())[0].item()
    padded = batch(plain=t([[L(0.5), L(0.2)], [L(0.01), L(0.5)]]), judged=t([[L(0.25), L(0.8)], [L(0.9), 0.0]]))
    assert self_distill_loss(padded, SelfDistillOptions())[0].item() == pytest.approx(a)


def example(i: int, verdict: str, critique: str | None) -> Example:
    p = Prompt(id=f"p{i}", messages=[Message(role="system", content="sys"), Message(role="user", content=f"q{i}")])
    s = Sample(id=f"s{i}", prompt_id=p.id, response=f"r{i}", policy_version=0)
    return Example(p, s, Judgment(sample_id=s.id, verdict=verdict, critique=critique, judge="t"))


def test_select_and_the_teacher_context():
    rows = [example(0, "negative", "Too long."), example(1, "negative", None), example(2, "positive", None)]
    sd = SelfDistill(SelfDistillOptions())
    chosen, m = sd.select(rows, np.random.default_rng(0))
    assert [e.sample.id for e in chosen] == ["s0", "s2"] and [e.negative for e in chosen] == [True, False]
    assert (m["n_negative"], m["n_positive"], m["n_negative_without_critique"]) == (1, 1, 1)
    teacher = sd.context_messages("judged", chosen[0])
    assert teacher[0] == Message(role="system", content="sys"), "the system turn stays"
    assert "q0" in teacher[1].content and "Too long." in teacher[1].content
    assert "r0" not in teacher[1].content, "the default teacher reads the judgment, not the response it could copy"
    assert sd.context_messages("judged", chosen[1]) is None, "a positive needs no teacher"
    assert sd.context_messages("plain", chosen[0]) == list(rows[0].prompt.messages)
    none = SelfDistill(SelfDistillOptions(positives="none")).select(rows, np.random.default_rng(0))[0]
    assert [e.sample.id for e in none] == ["s0"]
    assert teacher_messages(chosen[0], "{judgment}|{response}")[1].content == "Too long.|r0"


def test_config_checks_the_template_and_maps_spans_only_when_read():
    with pytest.raises(ConfigError, match="it may use"):
        validate_config(
            {
                "name": "t",
                "data": {"path": "x"},
                "model": {"path": "m"},
                "judge": {"type": "rules", "checks": [{"type": "finished"}]},
                "learner": {"objective": {"type": "self_distill", "teacher_template": "{instructions}"}},
            }
        )
    assert not SelfDistill(SelfDistillOptions()).needs_spans
    assert SelfDistill(SelfDistillOptions(spans="weight")).needs_spans


def test_it_learns_on_the_tiny_model(tiny_model):
    """A negative with a critique, trained for a few iterations: the student moves toward the
    teacher, so the gap between them on the sampled tokens shrinks, and the teacher's context
    runs without gradient in a forward pass of its own."""
    from alignloop.policies.learner import Learner

    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "x"},
            "model": {
                "path": str(tiny_model),
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "lr": 2e-2,
                "minibatch_size": 2,
                "micro_batch_size": 2,
                "threads": 1,
                "schedule": "constant",
                "objective": {"type": "self_distill", "positives": "none"},
            },
        }
    )
    learner = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    prompt = Prompt(id="p0", messages=[Message(role="user", content="the cat sat")])
    rows = []
    for i, text in enumerate(["the big red dog ran", "no the moon"]):
        ids = learner.tokenizer(text, add_special_tokens=False)["input_ids"] + [learner.tokenizer.eos_token_id]
        s = Sample(id=f"s{i}", prompt_id="p0", response=text, policy_version=0, token_ids=ids)
        rows.append(Example(prompt, s, Judgment(sample_id=s.id, verdict="negative", critique="Too red.", judge="t")))
    first = learner.learn(rows, iteration=1)
    assert first["n_negative"] == 2
    for it in range(2, 8):
        last = learner.learn(rows, iteration=it)
    assert last["distill_gap"] < 0.6 * first["distill_gap"], (first["distill_gap"], last["distill_gap"])
    b = learner.batch(learner.objective.select(rows, np.random.default_rng(0))[0])
    assert b.plain.requires_grad and not b.judged.requires_grad
