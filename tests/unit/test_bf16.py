"""Mixed precision on the tiny model: the learner under bfloat16 autocast keeps float32 LoRA
weights, gradients and AdamW state and still learns; the sampler in bfloat16 and the learner
in bf16 agree on the sampled tokens' log-probs within the bound GRPO/PPO ratios can bear."""

from __future__ import annotations

import pytest
import torch

from alignloop.loop.config import validate_config
from alignloop.policies.learner import Learner
from alignloop.policies.objectives.base import Example
from alignloop.policies.samplers.hf import HFSampler
from alignloop.records import Judgment, Message, Prompt, Sample

PROMPTS = [
    Prompt(id=f"p{i}", messages=[Message(role="user", content=text)])
    for i, text in enumerate(["the cat sat", "a big red dog ran on the mat"])
]


def config(tiny_model, dtype: str = "float32", precision: str = "fp32", sampler_dtype: str | None = None):
    return validate_config(
        {
            "name": "t",
            "data": {"path": "x"},
            "model": {
                "path": str(tiny_model),
                "dtype": dtype,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "sampler": {"samples_per_prompt": 4, "max_new_tokens": 12, "threads": 1, "dtype": sampler_dtype},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "lr": 1e-2,
                "minibatch_size": 8,
                "micro_batch_size": 4,
                "threads": 1,
                "schedule": "constant",
                "precision": precision,
            },
        }
    )


def learner_of(cfg) -> Learner:
    return Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)


def rows_of(samples: list[Sample]) -> list[Example]:
    return [
        Example(PROMPTS[int(s.prompt_id[1:])], s, Judgment(sample_id=s.id, verdict="positive", judge="t"))
        for s in samples
    ]


def gaps(learner: Learner, rows: list[Example]) -> list[float]:
    mine = learner.sequence_logprobs(rows)
    return [abs(a - b) for e, lp in zip(rows, mine) for a, b in zip(e.sample.logprobs or (), lp)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_learner_keeps_float32_master_weights_and_learns(tiny_model, dtype):
    learner = learner_of(config(tiny_model, dtype, "bf16"))
    base = next(p for n, p in learner.model.named_parameters() if "q_proj.base_layer" in n)
    assert base.dtype == getattr(torch, dtype), "the frozen base stays in model.dtype"
    assert learner.params and all(p.dtype == torch.float32 for p in learner.params)
    ids = learner.tokenizer("yes the sun", add_special_tokens=False)["input_ids"] + [learner.tokenizer.eos_token_id]
    good = Sample(id="g", prompt_id="p0", response="yes the sun", policy_version=0, token_ids=ids)
    rows = [Example(PROMPTS[0], good, Judgment(sample_id="g", verdict="positive", judge="t"))] * 8

    def nll():
        return -sum(learner.sequence_logprobs(rows[:1])[0])

    before = nll()
    for it in range(1, 4):
        learner.learn(rows, iteration=it)
    assert nll() < before - 1.0
    state = [s for s in learner.optimizer.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in learner.params)


def test_bf16_forward_passes_differ_from_fp32_within_rounding(tiny_model):
    """The same adapter scored in fp32 and under bf16 autocast: not equal (autocast is on), and
    within bfloat16's rounding of the tiny model's log-probs."""
    fp32 = learner_of(config(tiny_model))
    bf16 = learner_of(config(tiny_model, precision="bf16"))
    ids = fp32.tokenizer("the big red dog ran", add_special_tokens=False)["input_ids"]
    s = Sample(id="s", prompt_id="p1", response="the big red dog ran", policy_version=0, token_ids=ids)
    row = rows_of([s])
    a, b = fp32.sequence_logprobs(row)[0], bf16.sequence_logprobs(row)[0]
    diff = max(abs(x - y) for x, y in zip(a, b))
    assert 0 < diff < 2e-2, diff


@pytest.mark.parametrize(
    "dtype, precision, sampler_dtype, mean_bound, max_bound",
    [
        ("float32", "fp32", None, 1e-5, 1e-4),  # the fp32 baseline: kernels' rounding only
        ("float32", "bf16", "bfloat16", 5e-3, 2e-2),  # fp32 weights, sampled in bf16, learned under autocast
        ("bfloat16", "bf16", None, 5e-3, 2e-2),  # a bf16 base for both
    ],
)
def test_sampler_and_learner_log_probs_agree(
    tiny_model, tmp_path, dtype, precision, sampler_dtype, mean_bound, max_bound
):
    """After one update (a nonzero adapter, merged into the sampler's weights), the sampler's
    log-probs of its own tokens against the learner's: measured here 1.1e-07 mean (fp32) and
    5.4e-04 to 7.3e-04 mean, 2.7e-03 to 3.7e-03 largest (bf16) over 96 tokens."""
    cfg = config(tiny_model, dtype, precision, sampler_dtype)
    learner = learner_of(cfg)
    sampler = HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path))
    assert next(sampler.model.parameters()).dtype == getattr(torch, sampler_dtype or dtype)
    sampler.load_adapter(learner.export())
    learner.learn(rows_of(sampler.generate(PROMPTS, iteration=1, seed=3)), iteration=1)
    sampler.load_adapter(learner.export())
    g = gaps(learner, rows_of(sampler.generate(PROMPTS, iteration=2, seed=4)))
    assert len(g) > 20
    assert sum(g) / len(g) < mean_bound and max(g) < max_bound, (sum(g) / len(g), max(g))
    if precision == "bf16":
        assert max(g) > 1e-6, "bf16 rounding shows: the check is not comparing fp32 with itself"
