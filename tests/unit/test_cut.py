"""CUT and Hindsight: losses and token detection checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignloop.policies.objectives.base import Example, TrainBatch
from alignloop.policies.objectives.cut import CUT, cut_loss
from alignloop.policies.objectives.hindsight import PERFECT, Hindsight
from alignloop.policies.objectives.options import CUTOptions, HindsightOptions
from alignloop.records import Judgment, Message, Prompt, Sample

L = math.log


def batch(plain, judged, mask, negative) -> TrainBatch:
    def t(x):
        return torch.tensor(x, dtype=torch.float64)

    return TrainBatch(plain=t(plain), judged=t(judged), mask=t(mask), negative=t(negative))


def test_cut_loss_by_hand():
    """Row 0, negative, first position is padding:
        t1: p(y|x) = 0.5, p(y|x,j) = 0.5 -> ratio 1.0, not > 1.1 -> likelihood  -log 0.5 = 0.693147
        t2: p(y|x) = 0.2, p(y|x,j) = 0.4 -> ratio 2.0 > 1.1 -> unlikelihood -log(1 - 0.2 + 1e-5) = 0.223131
        Misalign mean = (0.693147 + 0.223131) / 2 = 0.458139
        Align-N  mean = (-log 0.5 - log 0.4) / 2 = (0.693147 + 0.916291) / 2 = 0.804719
        L_N = 1/2 (0.804719 + 0.458139) = 0.631429
    Row 1, positive: Align-P = (-log 0.5 - log 0.25 - log 1) / 3 = 0.693147
    Loss = (0.631429 + 0.693147) / 2 = 0.662288; one of two negative tokens detected."""
    b = batch(
        plain=[[L(0.9), L(0.5), L(0.2)], [L(0.5), L(0.25), L(1.0)]],
        judged=[[L(0.1), L(0.5), L(0.4)], [0.0, 0.0, 0.0]],
        mask=[[0, 1, 1], [1, 1, 1]],
        negative=[1, 0],
    )
    loss, m = cut_loss(b, CUTOptions())
    assert loss.item() == pytest.approx(0.662288, abs=1e-6)
    assert m["detected_fraction"] == pytest.approx(0.5)
    assert m["unlikelihood_part"] == pytest.approx(0.223131 / 2, abs=1e-6)
    assert m["align_n_nll"] == pytest.approx(0.804719, abs=1e-6)


@pytest.mark.parametrize("threshold, detected", [(1.999, True), (2.001, False)])
def test_threshold_boundary(threshold, detected):
    """ratio = 0.5 / 0.25 = 2: detected just below lambda = 2, not just above.
    Detected:     1/2 (-log 0.5 + -log(1 - 0.25 + 1e-5)) = 1/2 (0.693147 + 0.287669) = 0.490408
    Not detected: 1/2 (-log 0.5 + -log 0.25)             = 1/2 (0.693147 + 1.386294) = 1.039721"""
    b = batch(plain=[[L(0.25)]], judged=[[L(0.5)]], mask=[[1]], negative=[1])
    loss, m = cut_loss(b, CUTOptions(threshold=threshold))
    assert m["detected_fraction"] == (1.0 if detected else 0.0)
    assert loss.item() == pytest.approx(0.490408 if detected else 1.039721, abs=1e-6)


def test_ratio_equal_to_lambda_is_not_inappropriate():
    """lambda = 1 and identical log-probs: ratio exactly 1, and detection is strict (>)."""
    b = batch(plain=[[L(0.3)]], judged=[[L(0.3)]], mask=[[1]], negative=[1])
    assert cut_loss(b, CUTOptions(threshold=1.0))[1]["detected_fraction"] == 0.0


def test_all_positive_batch_is_plain_nll():
    """(-log 0.5 - log 0.5) / 2 = 0.693147 and (-log 0.25) = 1.386294 -> mean 1.039721."""
    b = batch(
        plain=[[L(0.5), L(0.5)], [L(0.9), L(0.25)]], judged=[[0, 0], [0, 0]], mask=[[1, 1], [0, 1]], negative=[0, 0]
    )
    loss, m = cut_loss(b, CUTOptions())
    assert loss.item() == pytest.approx(1.039721, abs=1e-6) and m["detected_fraction"] == 0.0


def test_all_negative_batch_and_unlikelihood_weight():
    """One negative token, ratio 0.8/0.4 = 2 (detected), alpha = 0.5:
    Misalign = -0.5 log(1 - 0.4 + 1e-5) = 0.5 * 0.510809 = 0.255404; Align-N = -log 0.8 = 0.223144
    L = 1/2 (0.223144 + 0.255404) = 0.239274 for both identical rows."""
    b = batch(plain=[[L(0.4)], [L(0.4)]], judged=[[L(0.8)], [L(0.8)]], mask=[[1], [1]], negative=[1, 1])
    loss, m = cut_loss(b, CUTOptions(unlikelihood_weight=0.5))
    assert loss.item() == pytest.approx(0.239274, abs=1e-6) and m["detected_fraction"] == 1.0


def test_dynamic_weight_scales_unlikelihood_by_judged_probability():
    """gamma = 2: weight = 1 * 0.8^2 = 0.64; Misalign = -0.64 log(0.60001) = 0.64 * 0.510809 = 0.326918;
    L = 1/2 (0.223144 + 0.326918) = 0.275031."""
    b = batch(plain=[[L(0.4)]], judged=[[L(0.8)]], mask=[[1]], negative=[1])
    assert cut_loss(b, CUTOptions(dynamic_gamma=2.0))[0].item() == pytest.approx(0.275031, abs=1e-6)


def test_without_token_detection_every_negative_token_is_unlikelihood():
    """Ratio 1 (not detected with detection on). Off: Misalign = -log(1 - 0.5 + 1e-5) = 0.693127,
    Align-N = -log 0.5 = 0.693147, L = 0.693137. On: L = 1/2 (0.693147 + 0.693147) = 0.693147."""
    b = batch(plain=[[L(0.5)]], judged=[[L(0.5)]], mask=[[1]], negative=[1])
    off, m = cut_loss(b, CUTOptions(token_detection=False))
    assert m["detected_fraction"] == 1.0 and off.item() == pytest.approx(0.693137, abs=1e-6)
    assert cut_loss(b, CUTOptions())[0].item() == pytest.approx(0.693147, abs=1e-6)


def test_padding_never_counts():
    a = batch(plain=[[L(0.9), L(0.2)]], judged=[[L(0.1), L(0.4)]], mask=[[0, 1]], negative=[1])
    b = batch(plain=[[L(0.01), L(0.2)]], judged=[[L(0.99), L(0.4)]], mask=[[0, 1]], negative=[1])
    assert cut_loss(a, CUTOptions())[0].item() == pytest.approx(cut_loss(b, CUTOptions())[0].item())


def examples(verdicts, critique="Too long."):
    out = []
    for i, v in enumerate(verdicts):
        p = Prompt(id=f"p{i}", messages=[Message(role="system", content="sys"), Message(role="user", content=f"q{i}")])
        s = Sample(id=f"s{i}", prompt_id=p.id, response="r", policy_version=0)
        out.append(
            Example(
                p, s, Judgment(sample_id=s.id, verdict=v, critique=critique if v == "negative" else None, judge="t")
            )
        )
    return out


def test_cut_downsamples_positives_and_skips_negatives_without_critique():
    rows = examples(["negative"] * 8 + ["positive"] * 5)
    rows.append(Example(rows[0].prompt, rows[0].sample, Judgment(sample_id="s0", verdict="negative", judge="t")))
    keep, m = CUT(CUTOptions()).select(rows, np.random.default_rng(0))
    assert m == {"n_train": 10, "n_negative": 8, "n_positive": 2, "n_negative_without_critique": 1}
    assert sum(e.negative for e in keep) == 8
    keep_all, m_all = CUT(CUTOptions(downsample=None)).select(
        examples(["negative"] * 2 + ["positive"] * 5), np.random.default_rng(0)
    )
    assert m_all["n_positive"] == 5


def test_cut_contexts_put_the_judgment_in_the_prompt_for_negatives_only():
    cut = CUT(CUTOptions())
    neg, pos = examples(["negative", "positive"])
    cut.select([neg, pos], np.random.default_rng(0))
    judged = cut.context_messages("judged", neg)
    assert [m.role for m in judged] == ["system", "user"] and judged[0].content == "sys"
    assert "q0" in judged[1].content and "Judgment: Too long." in judged[1].content
    assert cut.context_messages("judged", pos) is None
    assert cut.context_messages("plain", neg) == list(neg.prompt.messages)


def test_hindsight_trains_every_judged_response_under_its_judgment():
    rows = examples(["negative", "positive"])
    keep, m = Hindsight(HindsightOptions()).select(rows, np.random.default_rng(0))
    assert len(keep) == 2 and m["n_train"] == 2
    h = Hindsight(HindsightOptions())
    assert "Judgment: Too long." in h.context_messages("judged", rows[0])[-1].content
    assert f"Judgment: {PERFECT}" in h.context_messages("judged", rows[1])[-1].content


def test_learner_runs_both_contexts_of_negatives_in_one_forward_pass(tiny_model):
    from alignloop.loop.config import validate_config
    from alignloop.policies.learner import Learner

    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "x"},
            "model": {
                "path": str(tiny_model),
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]},
            },
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "objective": {"type": "cut", "downsample": None},
                "threads": 1,
                "minibatch_size": 4,
                "micro_batch_size": 4,
            },
        }
    )
    learner = Learner(cfg.model, cfg.learner)
    rows = examples(["negative", "negative", "positive"])
    learner.objective.select(rows, np.random.default_rng(0))
    calls = []
    hook = learner.model.register_forward_hook(
        lambda mod, args, kw, out: calls.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        b = learner.batch(rows)
    finally:
        hook.remove()
    assert calls == [5], "2 negatives x 2 contexts + 1 positive x 1 context, in one pass"
    assert (b.judged[2] == 0).all() and (b.judged[:2] != 0).any()
    loss, m = learner.objective.loss(b)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= m["detected_fraction"] <= 1


def test_learner_maps_judged_spans_onto_the_sampled_tokens(tiny_model):
    """The batch's span mask is right-aligned like the response mask, covers exactly the
    tokens of the judged words, and a row whose spans cannot be mapped is counted."""
    from alignloop.loop.config import validate_config
    from alignloop.policies.learner import Learner
    from alignloop.records import Span

    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "x"},
            "model": {
                "path": str(tiny_model),
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]},
            },
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "objective": {"type": "cut", "downsample": None, "detection": "spans"},
                "threads": 1,
                "minibatch_size": 4,
                "micro_batch_size": 4,
            },
        }
    )
    learner = Learner(cfg.model, cfg.learner)
    tok = learner.tokenizer
    texts = ["the cat sat on the mat", "a dog ran", "the sun"]
    rows = examples(["negative"] * 3)
    for k, (e, text) in enumerate(zip(rows, texts)):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        spans = [Span(start=4, end=7)] if k == 0 else [Span(start=0, end=1)] if k == 2 else None
        e.sample = e.sample.model_copy(update={"response": text, "token_ids": ids})
        e.judgment = e.judgment.model_copy(update={"spans": spans})
    rows[2].sample = rows[2].sample.model_copy(update={"response": "the moon"})  # ids no longer decode to it
    rows, _ = learner.objective.select(rows, np.random.default_rng(0))
    assert learner.map_spans(rows) == {"span_alignment_failures": 1}
    b = learner.batch(rows)
    t = b.mask.shape[1]
    assert b.span_mask[0].tolist() == [0.0] * (t - 7) + [0, 1, 0, 0, 0, 0, 0]  # "cat" of the 6 words + <eot>
    assert b.has_spans.tolist() == [1.0, 0.0, 0.0] and not b.span_mask[1:].any()
    loss, m = learner.objective.loss(b)
    assert m["detected_fraction"] == pytest.approx(1 / (7 + 4 + 3))
