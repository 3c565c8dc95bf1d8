"""Sampling ahead of the learner (asynchronous.max_staleness), the real cycle in-process on
the tiny model: iteration j samples from the adapter of iteration j-1-N whatever the timing,
the samples carry that version, GRPO's importance ratio sees the lag, the run is reproducible
with either judging mode, and a resumed run reads back the adapters it still samples from."""

from __future__ import annotations

import json

import pytest

from alignloop.loop.config import validate_config
from alignloop.loop.store import RunStore
from alignloop.records import Sample
from tests.conftest import tiny_config, write_prompts
from tests.helpers import artifacts, assert_same, run_in_process

SLOW = {"type": "python", "target": "tests.judge_fakes:SlowRules", "options": {"delay_s": 0.1, "max_words": 4}}


def config(tmp_path, tiny_model, name: str, staleness: int, iterations: int = 3, streaming: bool = True):
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        write_prompts(prompts)
    return validate_config(
        tiny_config(
            tiny_model,
            prompts,
            tmp_path / name,
            iterations=iterations,
            judge=SLOW,
            learner={"objective": {"type": "grpo"}, "logprob_check_rows": 12},
            judging={"streaming": streaming},
            asynchronous={"max_staleness": staleness},
            tracking={"backends": []},
        )
    )


def versions(run_dir) -> list[set[int]]:
    store = RunStore(run_dir)
    return [{s.policy_version for s in store.load_samples(i)[1]} for i in (1, 2, 3)]


def test_each_iteration_samples_from_the_adapter_its_schedule_names(tmp_path, tiny_model):
    one = run_in_process(config(tmp_path, tiny_model, "one", 1))
    two = run_in_process(config(tmp_path, tiny_model, "two", 2))
    assert versions(tmp_path / "one") == [{0}, {0}, {1}]
    assert versions(tmp_path / "two") == [{0}, {0}, {0}]
    assert [m["policy_lag"] for m in one] == [0, 1, 1] and [m["policy_lag"] for m in two] == [0, 1, 2]
    assert [m["adapter_version"] for m in one] == [1, 2, 3]
    # The sampler's log-probs are pi_old: against the learner's own they differ by what the
    # lag changed (float noise alone at lag 0), and the ratio moves off 1 accordingly.
    gap = [m["old_logprob_gap"] for m in two]
    assert gap[0] < 1e-3 < gap[1] < gap[2], gap
    state = json.loads((tmp_path / "two" / "state.json").read_text())
    assert state["iteration"] == 3 and state["step"] == "learn" and state["data"]["ahead"] == {}


def test_sampling_ahead_is_reproducible_whatever_the_judging_mode(tmp_path, tiny_model):
    run_in_process(config(tmp_path, tiny_model, "streamed", 1))
    run_in_process(config(tmp_path, tiny_model, "sequential", 1, streaming=False))
    streamed = artifacts(tmp_path / "streamed")
    assert list(streamed["iters"]) == ["iter-0001", "iter-0002", "iter-0003"], "two empty runs would compare equal"
    assert_same(streamed, artifacts(tmp_path / "sequential"))


def test_a_resumed_run_samples_again_from_an_adapter_the_learner_has_left(tmp_path, tiny_model):
    """Iteration 2 samples from the start adapter; the resumed run has learned iteration 1
    and reads the start adapter back from the run directory."""
    run_in_process(config(tmp_path, tiny_model, "full", 1))
    run_in_process(config(tmp_path, tiny_model, "resumed", 1, iterations=1))
    assert not (tmp_path / "resumed" / "iter-0002").exists()
    run_in_process(config(tmp_path, tiny_model, "resumed", 1))  # `iterations` may grow on resume
    full = artifacts(tmp_path / "full")
    assert list(full["iters"]) == ["iter-0001", "iter-0002", "iter-0003"], "two empty runs would compare equal"
    assert_same(full, artifacts(tmp_path / "resumed"))


def test_rows_from_an_older_policy_without_log_probs_are_refused(tiny_model):
    """Recomputed by the learner, pi_old would be its own policy and the ratio would be 1."""
    from alignloop.policies.learner import Learner
    from alignloop.policies.objectives.base import Example
    from alignloop.records import Judgment, Message, Prompt

    cfg = validate_config(
        tiny_config(
            tiny_model, tiny_model / "unused.jsonl", tiny_model / "unused", learner={"objective": {"type": "grpo"}}
        )
    )
    learner = Learner(cfg.model, cfg.learner)
    learner.version = 2
    prompt = Prompt(id="p", messages=[Message(role="user", content="hi")])
    rows = [
        Example(
            prompt,
            Sample(id=f"p#{k}", prompt_id="p", response="a b", policy_version=1),
            Judgment(sample_id=f"p#{k}", verdict="positive", score=float(k), judge="t"),
        )
        for k in range(2)
    ]
    with pytest.raises(ValueError, match="drawn by adapter v1 and carries no log-probs"):
        learner.fix_old_logprobs(rows)
