"""On-policy RL and contrastive objectives: advantages, pairs and every loss by hand, plus
the learner's fixed old log-probs and metrics on a tiny model.

Token log-probs in the hand-built batches are chosen so that ratios are exact in float32:
log(1.5), log(0.75), ... with old log-probs 0 give exp(...) == 1.5, 0.75 exactly.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import get_args

import numpy as np
import pytest
import torch

from alignloop.loop.config import validate_config
from alignloop.policies.objectives.advantages import (
    build_pairs,
    group_normalized_advantages,
    mean_baseline_advantages,
    rloo_advantages,
)
from alignloop.policies.objectives.base import Context, Example, Objective, RowValue, TrainBatch
from alignloop.policies.objectives.dpo import dpo_loss
from alignloop.policies.objectives.grpo import clipped_surrogate, grpo_loss
from alignloop.policies.objectives.options import DPOOptions, GRPOOptions, PPOOptions, RLOOOptions, RWROptions
from alignloop.policies.objectives.ppo import ppo_loss
from alignloop.policies.objectives.registry import build_objective
from alignloop.policies.objectives.reinforce import reinforce_loss
from alignloop.policies.objectives.rwr import rwr_loss, rwr_weights
from alignloop.records import Judgment, Message, Prompt, Sample


def example(pid: str, i: int, score: float | None, verdict: str | None = None) -> Example:
    p = Prompt(id=pid, messages=[Message(role="user", content="the cat")])
    s = Sample(id=f"{pid}#{i}", prompt_id=pid, response="yes the sun", policy_version=0)
    return Example(p, s, Judgment(sample_id=s.id, score=score, verdict=verdict, judge="t"))


def adv(rows: list[Example]) -> list[float]:
    return [e.advantage for e in rows]


# advantages -------------------------------------------------------------------------------


def test_rloo_advantages_by_hand_with_k1_and_flat_prompts():
    """Prompt a, scores 1, 0, 0.5: A_i = r_i - mean of the other two
        1 - (0 + 0.5)/2 = 0.75,  0 - (1 + 0.5)/2 = -0.75,  0.5 - (1 + 0)/2 = 0.
    Prompt b has one sample (k = 1): no leave-one-out baseline exists; advantage 0, counted.
    Prompt c scores 0.3, 0.3: flat, advantage 0, counted."""
    a = [example("a", i, s) for i, s in enumerate([1.0, 0.0, 0.5])]
    b = [example("b", 0, 1.0)]
    c = [example("c", i, 0.3) for i in range(2)]
    counts = rloo_advantages(a + b + c)
    assert adv(a) == pytest.approx([0.75, -0.75, 0.0])
    assert adv(b) == [0.0] and adv(c) == [0.0, 0.0]
    assert counts == {"n_train_prompts": 3, "n_flat_prompts": 1, "n_single_prompts": 1}


def test_group_normalized_advantages_by_hand():
    """Scores 1, 0, 0.5: mean 0.5, sample std sqrt((0.25 + 0.25 + 0) / 2) = 0.5
        -> A = (0.5, -0.5, 0) / 0.5 = (1, -1, 0); without std scaling (0.5, -0.5, 0).
    A flat group gives exactly 0 (not 0 / eps), and so does k = 1."""
    a = [example("a", i, s) for i, s in enumerate([1.0, 0.0, 0.5])]
    flat = [example("f", i, 0.7) for i in range(3)]
    single = [example("s", 0, 0.2)]
    counts = group_normalized_advantages(a + flat + single)
    assert adv(a) == pytest.approx([1.0, -1.0, 0.0], abs=1e-5)
    assert adv(flat) == [0.0, 0.0, 0.0] and adv(single) == [0.0]
    assert counts == {"n_train_prompts": 3, "n_flat_prompts": 1, "n_single_prompts": 1}
    group_normalized_advantages(a, scale_by_std=False)
    assert adv(a) == pytest.approx([0.5, -0.5, 0.0])


def test_mean_baseline_and_verdict_rewards():
    """Verdicts become rewards 1 (positive) and 0 (negative). Rewards 1, 0 | 1, 1: the batch
    mean is 0.75, so A = 0.25, -0.75 | 0.25, 0.25 — the flat prompt b still moves, since the
    REINFORCE baseline does not look at prompts."""
    rows = [
        example("a", 0, None, "positive"),
        example("a", 1, None, "negative"),
        example("b", 0, 1.0),
        example("b", 1, 1.0),
    ]
    counts = mean_baseline_advantages(rows)
    assert adv(rows) == pytest.approx([0.25, -0.75, 0.25, 0.25])
    assert counts["n_flat_prompts"] == 1


def test_rloo_select_drops_rows_without_gradient_and_reports_counts():
    rows = [example("a", i, s) for i, s in enumerate([1.0, 0.0, 0.5])] + [example("b", i, 0.0) for i in range(2)]
    keep, m = build_objective(RLOOOptions()).select(rows, np.random.default_rng(0))
    assert [e.sample.id for e in keep] == ["a#0", "a#1"]
    assert m == {"n_train_prompts": 2, "n_flat_prompts": 1, "n_single_prompts": 0, "n_train": 2}


# REINFORCE / RLOO loss --------------------------------------------------------------------


def test_reinforce_loss_by_hand_and_padding_is_inert():
    """Row 0: log-probs -1, -2 -> log pi(y) = -3, A = 1.
    Row 1: one pad position, then -0.5 -> log pi(y) = -0.5, A = -2.
    loss = -mean(1 * -3, -2 * -0.5) = -mean(-3, 1) = 1.0. The pad value never counts."""

    def batch(pad_value):
        return TrainBatch(
            plain=torch.tensor([[-1.0, -2.0], [pad_value, -0.5]]),
            mask=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
            advantage=torch.tensor([1.0, -2.0]),
        )

    assert reinforce_loss(batch(0.0))[0].item() == pytest.approx(1.0)
    assert reinforce_loss(batch(-50.0))[0].item() == pytest.approx(1.0)


# GRPO / clipped surrogate -----------------------------------------------------------------


def grpo_batch(pad_value: float = 0.0) -> TrainBatch:
    """Row 0: A = +1, ratios 1.5 and 1.0.  Row 1: A = -1, a pad, then ratio 0.5."""
    lp = torch.tensor([[math.log(1.5), 0.0], [pad_value, math.log(0.5)]])
    return TrainBatch(
        plain=lp,
        mask=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
        advantage=torch.tensor([1.0, -1.0]),
        old_logprobs=torch.tensor([[0.0, 0.0], [3.0, 0.0]]),
    )


def test_grpo_loss_by_hand_sequence_and_token_averaging():
    """eps = 0.25. Per token -min(r A, clip(r, 0.75, 1.25) A):
        row 0 (A = +1): r = 1.5 -> -min(1.5, 1.25) = -1.25 (clipped);  r = 1 -> -1
        row 1 (A = -1): r = 0.5 -> -min(-0.5, -0.75) = 0.75 (clipped)
    sequence: mean(mean(-1.25, -1), 0.75) = mean(-1.125, 0.75) = -0.1875
    token:    (-1.25 - 1 + 0.75) / 3 = -0.5
    clip fraction 2 of 3 tokens. The pad (any log-prob there) changes nothing."""
    seq, m = grpo_loss(grpo_batch(), GRPOOptions(clip_eps=0.25, average="sequence"))
    tok, _ = grpo_loss(grpo_batch(), GRPOOptions(clip_eps=0.25, average="token"))
    assert seq.item() == pytest.approx(-0.1875) and tok.item() == pytest.approx(-0.5)
    assert m["clip_frac"] == pytest.approx(2 / 3)
    padded, _ = grpo_loss(grpo_batch(pad_value=-9.0), GRPOOptions(clip_eps=0.25, average="token"))
    assert padded.item() == pytest.approx(-0.5)


@pytest.mark.parametrize(
    "ratio, advantage, clipped",
    [
        (1.25, 1.0, False),  # exactly at 1 + eps: still inside, gradient r A
        (1.25 * 1.001, 1.0, True),  # just beyond: no gradient
        (0.75, -1.0, False),  # exactly at 1 - eps
        (0.75 * 0.999, -1.0, True),
        (0.5, 1.0, False),  # below the range with A > 0: the min keeps the unclipped term
        (1.5, -1.0, False),  # above the range with A < 0: likewise (pessimistic bound)
    ],
)
def test_clip_boundaries(ratio, advantage, clipped):
    """d loss / d log pi = -r A where the clip is not active, 0 where it is (eps = 0.25)."""
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, r, active = clipped_surrogate(lp, torch.zeros(1, 1), torch.tensor([advantage]), 0.25)
    loss.sum().backward()
    assert bool(active.item()) is clipped
    expected = 0.0 if clipped else -r.item() * advantage
    assert lp.grad.item() == pytest.approx(expected, abs=1e-6)


# PPO --------------------------------------------------------------------------------------


def test_ppo_loss_by_hand():
    """One row, a pad then one token: log pi = -1, log pi_old = -1 (r = 1), A = 1,
    log pi_ref = -1 + ln 2, so d = ln 2 and the k3 KL is e^d - d - 1 = 1 - ln 2 = 0.30685.
    loss = -1 + 0.5 * 0.30685 = -0.84657; no clipping."""
    batch = TrainBatch(
        plain=torch.tensor([[0.0, -1.0]]),
        mask=torch.tensor([[0.0, 1.0]]),
        advantage=torch.tensor([1.0]),
        ref_logprobs=torch.tensor([[-4.0, -1.0 + math.log(2)]]),
        old_logprobs=torch.tensor([[2.0, -1.0]]),
    )
    loss, m = ppo_loss(batch, PPOOptions(kl_coef=0.5))
    assert loss.item() == pytest.approx(-1 + 0.5 * (1 - math.log(2)), abs=1e-6)
    assert m["kl_penalty"] == pytest.approx(1 - math.log(2), abs=1e-6) and m["clip_frac"] == 0.0


def test_ppo_kl_is_zero_at_the_reference():
    lp = torch.tensor([[-0.3, -2.0]])
    batch = TrainBatch(
        plain=lp, mask=torch.ones(1, 2), advantage=torch.tensor([0.0]), ref_logprobs=lp.clone(), old_logprobs=lp.clone()
    )
    loss, m = ppo_loss(batch, PPOOptions())
    assert loss.item() == pytest.approx(0.0) and m["kl_penalty"] == pytest.approx(0.0)


# DPO / IPO --------------------------------------------------------------------------------


def dpo_batch(chosen_first: bool = True) -> TrainBatch:
    """Pair 1: chosen log pi(y) = -3 vs ref -4 (+1); rejected -5 vs ref -4 (-1): h = 2.
    Pair 2: all four equal -2: h = 0. Row 1 has a pad whose value must not count."""
    lp = torch.tensor([[-1.0, -2.0], [99.0, -5.0], [-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0], [7.0, -4.0], [-1.0, -1.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    chosen = torch.tensor([1.0, 0.0, 1.0, 0.0] if chosen_first else [0.0, 1.0, 1.0, 0.0])
    return TrainBatch(plain=lp, mask=mask, chosen=chosen, ref_logprobs=ref)


def test_dpo_and_ipo_losses_by_hand():
    """beta = 0.5, h = (2, 0).
    DPO: -log sigmoid(0.5 h) = (log(1 + e^-1), log 2) = (0.31326, 0.69315) -> mean 0.50320
    IPO (paper): (h - 1/(2 * 0.5))^2 = ((2 - 1)^2, (0 - 1)^2) = (1, 1) -> 1
    IPO (code):  (h - 0.5)^2 = (2.25, 0.25) -> 1.25"""
    loss, m = dpo_loss(dpo_batch(), DPOOptions(beta=0.5))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    assert m["margin"] == pytest.approx(1.0) and m["pair_accuracy"] == pytest.approx(0.5)
    assert dpo_loss(dpo_batch(), DPOOptions(beta=0.5, loss="ipo"))[0].item() == pytest.approx(1.0)
    assert dpo_loss(dpo_batch(), DPOOptions(beta=0.5, loss="ipo", ipo_target="code"))[0].item() == pytest.approx(1.25)


def test_dpo_refuses_rows_out_of_pair_order():
    with pytest.raises(ValueError, match="alternate chosen, rejected"):
        dpo_loss(dpo_batch(chosen_first=False), DPOOptions())


def ids(rows: list[Example]) -> list[str]:
    return [e.sample.id for e in rows]


def test_pairs_best_vs_worst_all_and_min_gap():
    """Scores 0.9, 0.1, 0.5. best_vs_worst: (0.9, 0.1), gap 0.8.
    all: (0.9, 0.1) 0.8, (0.9, 0.5) 0.4, (0.5, 0.1) 0.4; min_gap 0.5 keeps only the first;
    min_gap 0.9 keeps none."""
    rows = [example("a", i, s) for i, s in enumerate([0.9, 0.1, 0.5])]
    pairs, m = build_pairs(rows, "best_vs_worst")
    assert ids(pairs) == ["a#0", "a#1"] and m["n_pairs"] == 1
    assert [e.chosen for e in pairs] == [True, False] and pairs[0].gap == pytest.approx(0.8)
    pairs, _ = build_pairs(rows, "all")
    assert ids(pairs) == ["a#0", "a#1", "a#0", "a#2", "a#2", "a#1"]
    assert [e.chosen for e in pairs] == [True, False] * 3
    assert rows[2].chosen is None, "pair rows are copies: a#2 is chosen once and rejected once"
    assert ids(build_pairs(rows, "all", min_gap=0.5)[0]) == ["a#0", "a#1"]
    pairs, m = build_pairs(rows, "all", min_gap=0.9)
    assert pairs == [] and m == {"n_train_prompts": 1, "n_pairs": 0, "n_prompts_without_pair": 1}


def test_pairs_from_verdicts_and_no_pair_possible():
    """Prompt v has verdicts only: positive beats negative whatever min_gap (a verdict has no
    scale); two positives make no pair. Prompt e: equal scores. Prompt s: a single sample."""
    v = [example("v", 0, None, "negative"), example("v", 1, None, "positive"), example("v", 2, None, "positive")]
    e = [example("e", i, 0.4) for i in range(3)]
    s = [example("s", 0, 1.0)]
    pairs, m = build_pairs(v + e + s, "all", min_gap=5.0)
    assert ids(pairs) == ["v#1", "v#0", "v#2", "v#0"]
    assert m == {"n_train_prompts": 3, "n_pairs": 2, "n_prompts_without_pair": 2}
    keep, m = build_objective(DPOOptions()).select(e + s, np.random.default_rng(0))
    assert keep == [] and m["n_pairs"] == 0


# RWR --------------------------------------------------------------------------------------


def test_rwr_weights_and_loss_by_hand():
    """beta = 1, rewards 0 and ln 3: exp(r) = 1, 3 -> rescaled to mean 1: 0.5, 1.5.
    Rewards 1000 and 1000 + ln 3 would overflow exp(r) but give the same weights.
    Loss with per-row mean NLL 1.5 and 0.5 (the SFT test's batch): mean(0.5 * 1.5, 1.5 * 0.5) = 0.75."""
    assert rwr_weights(np.array([0.0, math.log(3)]), 1.0) == pytest.approx([0.5, 1.5])
    assert rwr_weights(np.array([1000.0, 1000 + math.log(3)]), 1.0) == pytest.approx([0.5, 1.5])
    batch = TrainBatch(
        plain=torch.tensor([[-1.0, -2.0], [-7.0, -0.5]]),
        mask=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
        weight=torch.tensor([0.5, 1.5]),
    )
    assert rwr_loss(batch)[0].item() == pytest.approx(0.75)


def test_rwr_select_weights_every_row():
    rows = [example("a", 0, 0.0), example("a", 1, math.log(3))]
    keep, m = build_objective(RWROptions(beta=1.0)).select(rows, np.random.default_rng(0))
    assert [e.weight for e in keep] == pytest.approx([0.5, 1.5]) and m["n_train"] == 2


# learner ----------------------------------------------------------------------------------


def learner_for(tiny_model, objective: dict, **learner):
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
                "lr": 1e-2,
                "minibatch_size": 4,
                "micro_batch_size": 2,
                "threads": 1,
                "schedule": "constant",
                "objective": objective,
                **learner,
            },
        }
    )
    return Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)


def scored_rows(learner, texts_scores: list[tuple[str, float]], prompt_id: str = "p0") -> list[Example]:
    prompt = Prompt(id=prompt_id, messages=[Message(role="user", content="the cat sat")])
    rows = []
    for i, (text, score) in enumerate(texts_scores):
        ids_ = learner.tokenizer(text, add_special_tokens=False)["input_ids"] + [learner.tokenizer.eos_token_id]
        s = Sample(id=f"{prompt_id}#{i}", prompt_id=prompt_id, response=text, policy_version=0, token_ids=ids_)
        rows.append(Example(prompt, s, Judgment(sample_id=s.id, score=score, judge="t")))
    return rows


TEXTS = [("yes the sun", 1.0), ("no", 0.0), ("the big red dog ran", 0.5), ("a cat", 0.0)]


def with_logprobs(rows: list[Example], logprobs: list[list[float]]) -> list[Example]:
    return [
        Example(e.prompt, e.sample.model_copy(update={"logprobs": lp}), e.judgment) for e, lp in zip(rows, logprobs)
    ]


def test_old_logprobs_fixed_at_begin_prefer_the_sampler_and_log_the_gap(tiny_model):
    """The sampler's log-probs, here the learner's own minus 0.1, are what the ratio divides
    by (gap 0.1 logged); after the iteration's updates they are still the sampler's.
    One epoch: the single step's ratio is e^0.1 (LoRA starts as a no-op). Two epochs: the
    mean ratio moves, because the second step sees the first one's update."""
    one = learner_for(tiny_model, {"type": "grpo"}, epochs=1)
    plain = scored_rows(one, TEXTS)
    mine = one.sequence_logprobs(plain)
    first = one.learn(with_logprobs(plain, [[x - 0.1 for x in lp] for lp in mine]), iteration=1)
    assert first["steps"] == 1 and first["ratio"] == pytest.approx(math.exp(0.1), abs=1e-4)
    learner = learner_for(tiny_model, {"type": "grpo"}, epochs=2)
    rows = with_logprobs(plain, [[x - 0.1 for x in lp] for lp in mine])
    m = learner.learn(rows, iteration=1)
    assert m["steps"] == 2  # 2 epochs of one minibatch
    assert m["ratio"] != pytest.approx(first["ratio"], abs=1e-4), "epoch 2 sees epoch 1's update"
    fixed = learner.batch(rows[:3]).old_logprobs
    for i, e in enumerate(rows[:3]):
        assert torch.equal(fixed[i, -len(e.sample.logprobs) :], torch.tensor(e.sample.logprobs))
    assert m["old_logprob_gap"] == pytest.approx(0.1, abs=1e-4) and m["n_old_logprobs_recomputed"] == 0
    assert m["n_old_logprobs_checked"] == 4
    assert m["entropy"] > 0 and {"advantage_mean", "advantage_std", "clip_frac", "n_flat_prompts"} <= m.keys()


def test_old_logprobs_recomputed_without_sampler_logprobs(tiny_model):
    """Rows without the sampler's log-probs get the learner's own, fixed before the update."""
    learner = learner_for(tiny_model, {"type": "grpo"})
    rows = scored_rows(learner, TEXTS)
    before = learner.sequence_logprobs(rows[:1])[0]
    m = learner.learn(rows, iteration=1)
    assert m["n_old_logprobs_recomputed"] == 4 and "old_logprob_gap" not in m
    torch.testing.assert_close(learner.batch(rows[:1]).old_logprobs[0], torch.tensor(before))
    assert learner.sequence_logprobs(rows[:1])[0] != pytest.approx(before, abs=1e-6), "the update moved the policy"


def test_ppo_and_dpo_learn_with_reference_metrics(tiny_model):
    """PPO and DPO run end to end; a micro-batch size of 1 is widened to whole pairs for DPO."""
    ppo = learner_for(tiny_model, {"type": "ppo"})
    m = ppo.learn(scored_rows(ppo, TEXTS), iteration=1)
    assert m["steps"] == 1 and m["kl_ref"] == pytest.approx(0.0, abs=1e-5)  # LoRA starts at the reference
    assert {"clip_frac", "kl_penalty", "advantage_mean"} <= m.keys()
    dpo = learner_for(tiny_model, {"type": "dpo", "pairs": "all"}, micro_batch_size=1)
    m = dpo.learn(scored_rows(dpo, TEXTS), iteration=1)
    assert m["n_pairs"] == 5 and m["steps"] == 3 and "kl_ref" in m


def test_sampler_logprobs_cost_no_forward_pass_beyond_the_checked_rows(tiny_model):
    """Only the rows without the sampler's log-probs, and `logprob_check_rows` of the others,
    go through the model before training (the passes without grad); the ratio uses the
    sampler's values either way."""
    learner = learner_for(tiny_model, {"type": "grpo"}, logprob_check_rows=1)
    plain = scored_rows(learner, TEXTS)
    mine = learner.sequence_logprobs(plain)
    rows = with_logprobs(plain[:3], [[x - 0.1 for x in lp] for lp in mine[:3]]) + plain[3:]
    seen = []
    hook = learner.model.register_forward_hook(
        lambda mod, args, kw, out: seen.append(kw["input_ids"].shape[0]) if not torch.is_grad_enabled() else None,
        with_kwargs=True,
    )
    try:
        m = learner.learn(rows, iteration=1)
    finally:
        hook.remove()
    assert sum(seen) == 2, "one row without log-probs + one checked row"
    assert (m["n_old_logprobs_recomputed"], m["n_old_logprobs_checked"]) == (1, 1)
    assert m["old_logprob_gap"] == pytest.approx(0.1, abs=1e-4)
    torch.testing.assert_close(learner.batch(rows[1:2]).old_logprobs[0], torch.tensor(rows[1].sample.logprobs))


def test_progress_is_readable_from_another_thread_while_learn_runs(tiny_model):
    """A driver polls progress() while learn() runs on another thread (the Ray actor serves
    both at once). Each optimizer step here waits until the test has read progress()."""
    learner = learner_for(tiny_model, {"type": "grpo"}, epochs=3)
    rows = scored_rows(learner, TEXTS)
    assert learner.progress() == (0, 0)
    stepped, go = threading.Semaphore(0), threading.Semaphore(0)

    def pause(*_):
        stepped.release()
        assert go.acquire(timeout=120), "the test stopped reading progress"

    learner.optimizer.register_step_post_hook(pause)
    seen = []
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(learner.learn, rows, 1)
        for _ in range(3):
            assert stepped.acquire(timeout=120), "learn() took no step"
            seen.append(learner.progress())
            go.release()
        m = done.result(timeout=120)
    assert seen == [(0, 3), (1, 3), (2, 3)], "read during step k+1: k steps done of 3 planned"
    assert learner.progress() == (3, 3) and m["steps"] == 3


def test_an_iteration_is_one_call():
    """learn() is the only way through an iteration, so a remote learner costs one round trip."""
    import inspect

    from alignloop.policies.learner import Learner

    # (a test that made Learner a Ray actor in this process leaves Ray's tracing argument on it)
    params = [p for p in inspect.signature(Learner.learn).parameters if p != "_ray_trace_ctx"]
    assert params == ["self", "examples", "iteration", "version"]
    assert not any(hasattr(Learner, name) for name in ("begin", "step", "finish")), "one call per iteration"


# typed loss inputs ------------------------------------------------------------------------


def test_every_declared_name_is_a_field_of_the_typed_rows_and_batches():
    """A context is a TrainBatch field; a per-row value is a field of Example and TrainBatch."""
    batch_fields = {f.name for f in dataclasses.fields(TrainBatch)}
    example_fields = {f.name for f in dataclasses.fields(Example)}
    assert set(get_args(Context)) <= batch_fields
    assert set(get_args(RowValue)) <= batch_fields & example_fields


def test_declared_row_values_must_be_set_and_known():
    rloo = build_objective(RLOOOptions())
    row = example("a", 0, 1.0)
    with pytest.raises(ValueError, match="RLOO reads 'advantage' but row a#0 has none"):
        rloo.row_tensors([row])
    row.advantage = 0.5
    assert rloo.row_tensors([row]) == {"advantage": pytest.approx(torch.tensor([0.5]))}
    with pytest.raises(TypeError, match=r"Typo.row_values has \['advantages'\]"):
        type("Typo", (Objective,), {"row_values": ("advantages",)})
