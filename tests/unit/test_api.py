"""The public Python API: what `import alignloop` gives a notebook or a script."""

from __future__ import annotations

import pytest

import alignloop
from alignloop.loop.store import RunStore
from alignloop.records import Judgment, Message, Prompt, Sample


def test_everything_in_all_is_importable_from_the_package():
    assert all(hasattr(alignloop, name) for name in alignloop.__all__)
    assert alignloop.Judgment is Judgment


def test_load_config_applies_overrides():
    cfg = alignloop.load_config("configs/quickstart.yaml", overrides=["iterations=2", "learner.lr=0.001"])
    assert (cfg.iterations, cfg.learner.lr) == (2, 0.001)
    with pytest.raises(alignloop.ConfigError, match="iteratons"):
        alignloop.load_config("configs/quickstart.yaml", overrides=["iteratons=2"])


def test_read_run_gives_the_records_and_metrics_of_a_run_directory(tmp_path):
    store = RunStore(tmp_path)
    prompt = Prompt(id="p", messages=[Message(role="user", content="Hi?")])
    sample = Sample(id="p@1#0", prompt_id="p", response="Hello.", policy_version=0)
    store.save_samples(1, [prompt], [sample])
    store.save_judgments(1, [Judgment(sample_id=sample.id, verdict="positive", judge="rules")])
    store.write_metrics(1, {"iteration": 1, "pass_rate": 1.0})
    run = alignloop.read_run(tmp_path)
    assert run.metrics == [{"iteration": 1, "pass_rate": 1.0}]
    assert run.prompts(1) == [prompt] and run.samples(1) == [sample]
    assert [j.verdict for j in run.judgments(1)] == ["positive"]
    with pytest.raises(alignloop.ConfigError, match="not a run directory"):
        alignloop.read_run(tmp_path / "iter-0001")
