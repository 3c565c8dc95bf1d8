"""Sampler and learner on a tiny random model: log-probs, padding, adapters, learning."""

from __future__ import annotations

import pytest
import torch

from alignloop.loop.config import validate_config
from alignloop.policies.adapter import AdapterMismatch, AdapterPayload
from alignloop.policies.learner import Learner
from alignloop.policies.objectives.base import Example
from alignloop.policies.samplers.hf import HFSampler
from alignloop.records import Judgment, Message, Prompt, Sample


@pytest.fixture(scope="module")
def cfg(tiny_model):
    return validate_config(
        {
            "name": "t",
            "data": {"path": "x"},
            "model": {
                "path": str(tiny_model),
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "sampler": {"samples_per_prompt": 3, "max_new_tokens": 6, "threads": 1},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {"lr": 1e-2, "minibatch_size": 4, "micro_batch_size": 2, "threads": 1, "schedule": "constant"},
        }
    )


PROMPTS = [
    Prompt(id=f"p{i}", messages=[Message(role="user", content=text)])
    for i, text in enumerate(["the cat sat", "a big red dog ran on the mat"])
]


@pytest.fixture(scope="module")
def sampler(cfg, tmp_path_factory):
    return HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path_factory.mktemp("sampler")))


def test_sampler_shapes_and_determinism(sampler):
    a = sampler.generate(PROMPTS, iteration=1, seed=7)
    b = sampler.generate(PROMPTS, iteration=1, seed=7)
    c = sampler.generate(PROMPTS, iteration=1, seed=8)
    assert a == b and a != c
    assert [s.prompt_id for s in a] == ["p0"] * 3 + ["p1"] * 3
    assert len({s.id for s in a}) == 6
    eos = sampler.tokenizer.eos_token_id
    for s in a:
        assert len(s.token_ids) == len(s.logprobs) <= 6
        assert all(lp <= 0 for lp in s.logprobs)
        if s.finish_reason == "stop":
            assert s.token_ids[-1] == eos and eos not in s.token_ids[:-1]
        else:
            assert len(s.token_ids) == 6 and eos not in s.token_ids


def test_learner_logprobs_match_sampler_and_ignore_padding(cfg, sampler):
    learner = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    sampler.load_adapter(learner.export())
    samples = sampler.generate(PROMPTS, iteration=1, seed=3)
    rows = [
        Example(PROMPTS[int(s.prompt_id[1:])], s, Judgment(sample_id=s.id, verdict="positive", judge="t"))
        for s in samples
    ]
    learner.model.eval()
    with torch.no_grad():
        together = learner.batch(rows)
        for i, row in enumerate(rows):
            alone = learner.batch([row])
            n = len(row.sample.token_ids)
            # Same values whether the row is batched with longer rows or alone: padding is inert.
            torch.testing.assert_close(together.plain[i, -n:], alone.plain[0, -n:], atol=1e-5, rtol=0)
            torch.testing.assert_close(alone.plain[0, -n:], torch.tensor(row.sample.logprobs), atol=1e-4, rtol=0)
            assert together.mask[i].sum().item() == n
            assert (together.plain[i][together.mask[i] == 0] == 0).all()


def test_sampler_refuses_corrupt_adapter_and_serves_new_versions(cfg, sampler):
    learner = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    p0 = learner.export()
    assert sampler.load_adapter(p0) == (0, p0.checksum)
    bad = AdapterPayload(1, p0.weights + b"x", p0.config, p0.checksum)
    with pytest.raises(AdapterMismatch):
        sampler.load_adapter(bad)
    assert sampler.serving() == (0, p0.checksum)
    with torch.no_grad():
        for p in learner.params:
            p.add_(0.5)  # a deliberately large change: what the sampler serves must change
    learner.version = 1
    p1 = learner.export()
    before = sampler.generate(PROMPTS, 1, seed=4)
    assert sampler.load_adapter(p1) == (1, p1.checksum) and p1.checksum != p0.checksum
    after = sampler.generate(PROMPTS, 1, seed=4)
    assert [s.logprobs for s in before] != [s.logprobs for s in after]
    assert all(s.policy_version == 1 for s in after)
    assert sorted(x.name for x in sampler.workdir.iterdir()) == ["adapter-v1"], "old adapter versions are removed"


def test_learning_raises_the_likelihood_of_accepted_responses(cfg):
    learner = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    prompt = PROMPTS[0]
    ids = learner.tokenizer("yes the sun", add_special_tokens=False)["input_ids"] + [learner.tokenizer.eos_token_id]
    good = Sample(id="g", prompt_id="p0", response="yes the sun", policy_version=0, token_ids=ids)
    rows = [Example(prompt, good, Judgment(sample_id="g", verdict="positive", judge="t"))] * 4

    def nll():
        learner.model.eval()
        with torch.no_grad():
            return -learner.batch(rows[:1]).plain.sum().item()

    before = nll()
    for it in range(1, 4):
        m = learner.learn(rows, iteration=it)
        assert m["n_train"] == 4 and m["steps"] == 1
    assert learner.version == 3
    assert nll() < before - 1.0


def test_export_restore_roundtrip_continues_identically(cfg):
    a = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    prompt = PROMPTS[1]
    s = Sample(id="s", prompt_id="p1", response="big dog", policy_version=0)
    rows = [Example(prompt, s, Judgment(sample_id="s", verdict="positive", judge="t"))] * 4
    a.learn(rows, 1)
    payload, state = a.export(), a.state_bytes()
    b = Learner(cfg.model, cfg.learner, temperature=1.0, seed=123)  # different init, then restored
    b.restore(payload, state)
    assert b.export().checksum == payload.checksum and b.version == 1
    a.learn(rows, 2)
    b.learn(rows, 2)
    assert a.export().checksum == b.export().checksum, "optimizer state did not survive the round trip"


def test_restore_with_a_fresh_optimizer_and_a_given_version(cfg):
    """A nightly round with fresh_optimizer: the promoted adapter's weights, no optimizer
    state; numbering continues from the series, and learn() takes the round's number."""
    a = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    s = Sample(id="s", prompt_id="p1", response="big dog", policy_version=0)
    rows = [Example(PROMPTS[1], s, Judgment(sample_id="s", verdict="positive", judge="t"))] * 4
    a.learn(rows, 1)
    payload = a.export()
    fresh = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    fresh.restore(payload, None, version=5)
    assert fresh.version == 5 and fresh.export().checksum == payload.checksum
    assert fresh.optimizer.state_dict()["state"] == {}, "no optimizer state may be carried over"
    kept = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    kept.restore(payload, a.state_bytes(), version=5)
    assert kept.optimizer.state_dict()["state"] != {}
    fresh.learn(rows, 2)
    kept.learn(rows, 2)
    assert fresh.export().checksum != kept.export().checksum, "the optimizer state must matter"
    fresh.learn(rows, 3, version=9)
    assert fresh.version == 9


def test_sampler_workdirs_live_in_the_cache_and_dead_samplers_dirs_are_removed(tmp_path, monkeypatch):
    import os

    from alignloop.policies import model
    from alignloop.policies.model import sampler_workdir

    monkeypatch.setenv("ALIGNLOOP_CACHE", str(tmp_path))
    dead_pid = 4_000_000  # above Linux's pid_max: no process has it
    assert not model._alive(dead_pid) and model._alive(os.getpid())
    left = tmp_path / "samplers" / f"{dead_pid}-abc"  # what a kill -9 leaves behind
    (left / "adapter-v3").mkdir(parents=True)
    mine = sampler_workdir()
    assert mine.parent == tmp_path / "samplers" and mine.name.startswith(f"{__import__('os').getpid()}-")
    assert not left.exists(), "a dead sampler's adapter copies are cleaned up on the next start"
    assert sampler_workdir().exists() and mine.exists(), "a live process's directory stays"


def test_a_merged_adapter_samples_as_the_unmerged_one_and_versions_swap_exactly(cfg, tmp_path):
    """merge_adapter (the default) folds the LoRA into the weights: the log-probs are the
    unmerged adapter's (to float rounding), and a replica that served v0 then v1 samples v2
    bit for bit as a fresh replica (a restarted actor) that loads v2 alone."""
    learner = Learner(cfg.model, cfg.learner, temperature=1.0, seed=0)
    payloads = []
    for v in range(3):
        with torch.no_grad():
            for p in learner.params:
                p.add_(0.05 * torch.randn_like(p))
        learner.version = v
        payloads.append(learner.export())
    unmerged_cfg = cfg.sampler.model_copy(update={"merge_adapter": False})
    served, fresh = (HFSampler(cfg.model, cfg.sampler, workdir=str(tmp_path / d)) for d in ("a", "b"))
    unmerged = HFSampler(cfg.model, unmerged_cfg, workdir=str(tmp_path / "c"))
    for p in payloads:
        served.load_adapter(p)
    fresh.load_adapter(payloads[2])
    unmerged.load_adapter(payloads[2])
    a, b, c = (s.generate(PROMPTS, 1, seed=5) for s in (served, fresh, unmerged))
    assert served._lora_layers() and all(m.merged for m in served._lora_layers())
    assert a == b, "swapping versions must restore the base weights exactly"
    assert [s.token_ids for s in a] == [s.token_ids for s in c]
    for x, y in zip(a, c):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=0)
    assert not any(isinstance(m, torch.nn.Module) and getattr(m, "merged", False) for m in unmerged.model.modules())


def test_adapter_config_is_written_the_same_whatever_order_peft_lists_target_modules():
    """PEFT iterates a set: two identical runs listed target_modules in different orders."""
    from alignloop.policies.adapter import AdapterPayload

    a = AdapterPayload.create(1, b"w", {"r": 8, "target_modules": ["v_proj", "q_proj", "o_proj"]})
    b = AdapterPayload.create(1, b"w", {"r": 8, "target_modules": ["o_proj", "q_proj", "v_proj"]})
    assert a.files() == b.files() and a.config["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    assert (
        AdapterPayload.create(1, b"w", {"r": 8, "target_modules": "all-linear"}).config["target_modules"]
        == "all-linear"
    )
