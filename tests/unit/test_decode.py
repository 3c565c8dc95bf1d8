"""alignloop's own decoding loop (sampler.decoder: alignloop) against transformers' generate:
the same distribution, the same log-probs as the learner's, the same stop semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from alignloop.loop.config import validate_config
from alignloop.policies.learner import Learner
from alignloop.policies.objectives.base import Example
from alignloop.policies.samplers.decode import draw, nucleus
from alignloop.policies.samplers.hf import HFSampler
from alignloop.records import Judgment, Message, Prompt

PROMPTS = [
    Prompt(id=f"p{i}", messages=[Message(role="user", content=text)])
    for i, text in enumerate(["the cat sat", "a big red dog ran on the mat"])
]


def config(tiny_model, **sampler):
    return validate_config(
        {
            "name": "t",
            "data": {"path": "x"},
            "model": {
                "path": str(tiny_model),
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "sampler": {"samples_per_prompt": 3, "max_new_tokens": 6, "threads": 1, **sampler},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {"lr": 1e-2, "micro_batch_size": 4, "threads": 1, "logprob_check_rows": 0},
        }
    )


def test_draw_follows_the_distribution_and_never_picks_a_zero():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05])
    tokens = draw(probs.expand(200_000, -1))
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert freq[1] == 0
    torch.testing.assert_close(freq, probs, atol=0.005, rtol=0)
    # unnormalised rows (a masked softmax's float sum) draw in proportion as well
    assert (draw(torch.tensor([[0.0, 0.0, 3.0]]).expand(1000, -1)) == 2).all()


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
def test_nucleus_keeps_what_transformers_keeps(top_p):
    torch.manual_seed(1)
    logits = torch.randn(16, 300) * 3
    ours = nucleus(logits, top_p)
    theirs = TopPLogitsWarper(top_p)(None, logits.clone())
    differ = ours.isinf() != theirs.isinf()
    # Only where float rounding of the two cumulative sums decides: a token whose more likely
    # tokens hold top_p up to the last digits.
    probs = logits.softmax(-1)
    before = (probs[:, None, :] > probs[:, :, None]).float().mul(probs[:, None, :]).sum(-1)  # (N, V)
    assert (before[differ] - top_p).abs().lt(1e-5).all()
    assert differ.sum() <= 2
    assert nucleus(logits, 1.0) is logits


@pytest.mark.parametrize("decoder", ["transformers", "alignloop"])
def test_both_decoders_stop_alike_and_are_seeded(tiny_model, tmp_path, decoder):
    cfg = config(tiny_model, decoder=decoder)
    sampler = HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path))
    a = sampler.generate(PROMPTS, iteration=1, seed=7)
    assert a == sampler.generate(PROMPTS, iteration=1, seed=7)
    assert a != sampler.generate(PROMPTS, iteration=1, seed=8)
    assert [s.prompt_id for s in a] == ["p0"] * 3 + ["p1"] * 3
    eos = sampler.tokenizer.eos_token_id
    for s in a:
        assert len(s.token_ids) == len(s.logprobs) <= 6 and all(lp <= 0 for lp in s.logprobs)
        if s.finish_reason == "stop":
            assert s.token_ids[-1] == eos and eos not in s.token_ids[:-1]
        else:
            assert len(s.token_ids) == 6 and eos not in s.token_ids


@pytest.mark.parametrize("decoder", ["transformers", "alignloop"])
def test_min_new_tokens_holds_back_the_stop_token(tiny_model, tmp_path, decoder):
    cfg = config(tiny_model, decoder=decoder, min_new_tokens=5)
    sampler = HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path))
    for seed in range(3):
        for s in sampler.generate(PROMPTS, iteration=1, seed=seed):
            assert len(s.token_ids) >= 5 and sampler.tokenizer.eos_token_id not in s.token_ids[:4]


def test_the_loops_log_probs_are_the_learners(tiny_model, tmp_path):
    """Through the repeated prompt cache, step after step: what the learner computes for the
    same tokens, the number GRPO's importance ratio divides by."""
    cfg = config(tiny_model, decoder="alignloop", samples_per_prompt=4, max_new_tokens=8, temperature=0.7)
    learner = Learner(cfg.model, cfg.learner, temperature=0.7, seed=0)
    with torch.no_grad():  # a non-zero adapter, so its weights matter
        for p in learner.params:
            p.add_(torch.randn_like(p) * 0.1)
    sampler = HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path))
    sampler.load_adapter(learner.export())
    samples = sampler.generate(PROMPTS, iteration=1, seed=3)
    rows = [Example(PROMPTS[int(s.prompt_id[1:])], s, Judgment(sample_id=s.id, score=1.0, judge="t")) for s in samples]
    mine = learner.sequence_logprobs(rows)
    for s, lp in zip(samples, mine):
        torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(lp), atol=1e-4, rtol=0)


def test_both_decoders_draw_the_first_token_from_the_models_distribution(tiny_model, tmp_path):
    """Many one-token samples of one prompt: each decoder's frequencies against softmax(logits / T)."""
    n, temperature = 3000, 1.5
    prompt = PROMPTS[:1]
    expected = None
    for decoder in ("transformers", "alignloop"):
        cfg = config(tiny_model, decoder=decoder, samples_per_prompt=n, max_new_tokens=1, temperature=temperature)
        sampler = HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path / decoder))
        if expected is None:
            from alignloop.policies.model import render_prompt

            ids = torch.tensor([render_prompt(sampler.tokenizer, prompt[0].messages)])
            with torch.no_grad():
                expected = (sampler.model(input_ids=ids).logits[0, -1] / temperature).softmax(-1)
        tokens = torch.tensor([s.token_ids[0] for s in sampler.generate(prompt, iteration=1, seed=11)])
        freq = torch.bincount(tokens, minlength=expected.numel()).float() / n
        total_variation = (freq - expected).abs().sum().item() / 2
        assert total_variation < 0.06, (decoder, total_variation)


def test_prefix_sharing_gives_the_separate_passes_log_probs_and_gradients(tiny_model, tmp_path):
    """learner.prefix_sharing: one pass per distinct prompt, its cache serving each response to
    it (of several lengths), gives the log-probs and LoRA gradients of one pass per row."""
    cfg = config(tiny_model, samples_per_prompt=3, max_new_tokens=8)
    sampler = HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path))
    samples = sampler.generate(PROMPTS, iteration=1, seed=5)
    assert len({len(s.token_ids) for s in samples}) > 1  # ragged responses, right-aligned back
    rows = [Example(PROMPTS[int(s.prompt_id[1:])], s, Judgment(sample_id=s.id, score=1.0, judge="t")) for s in samples]
    rows = rows[::2] + rows[1::2]  # the prompts interleaved: the shared pass finds them anyway
    out = {}
    for sharing in (False, True):
        cfg = config(tiny_model)
        learner_cfg = cfg.learner.model_copy(update={"prefix_sharing": sharing})
        learner = Learner(cfg.model, learner_cfg, temperature=0.8, seed=0)
        with torch.no_grad():
            for p in learner.params:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
        batch = learner.batch(rows)
        (batch.plain.sum() * 0.01).backward()
        out[sharing] = batch, [p.grad.clone() for p in learner.params]
        if sharing:  # every step's rows come grouped by prompt
            for step in learner._plan(rows, np.random.default_rng(0)):
                ids = [e.prompt.id for e in step]
                assert ids == sorted(ids, key=ids.index)
    (separate, g0), (shared, g1) = out[False], out[True]
    torch.testing.assert_close(shared.mask, separate.mask)
    torch.testing.assert_close(shared.plain, separate.plain, atol=1e-5, rtol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_run_with_both_settings_is_reproducible_and_its_ratio_starts_at_one(tmp_path, tiny_model):
    """The loop's own decoder and prefix sharing through a real run (in process, sampling
    ahead): two runs write the same artifacts, and GRPO's pi_old, the decoder's log-probs,
    agrees with the learner before the first update."""
    from tests.conftest import tiny_config, write_prompts
    from tests.helpers import artifacts, assert_same, run_in_process

    write_prompts(tmp_path / "p.jsonl")
    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(
            tiny_model,
            tmp_path / "p.jsonl",
            tmp_path / name,
            sampler={"decoder": "alignloop"},
            learner={"objective": {"type": "grpo"}, "prefix_sharing": True, "logprob_check_rows": 12},
            asynchronous={"max_staleness": 1},
            tracking={"backends": []},
        )
        runs.append((run_in_process(validate_config(cfg)), artifacts(tmp_path / name)))
    (metrics, a), (_, b) = runs
    assert_same(a, b)
    assert metrics[0]["old_logprob_gap"] < 1e-4 and metrics[0]["policy_lag"] == 0
