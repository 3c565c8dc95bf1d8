"""Config: every shipped config validates; each class of bad config names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignloop.loop.config import (
    ConfigError,
    apply_override,
    load_config,
    redact,
    resume_conflicts,
    to_yaml,
    validate_config,
)
from alignloop.loop.data import prompt_files

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def base() -> dict:
    return {
        "name": "t",
        "data": {"path": "p.jsonl"},
        "judge": {"type": "rules", "checks": [{"type": "max_words", "limit": 30}]},
    }


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.iterations > 0
    # A nightly config's `{round}` stands for any night: some night's file must be there.
    data = cfg.data.path.replace("{round}", "*")
    assert prompt_files(ROOT / data if "*" not in data else str(ROOT / data)), (
        f"{path.name}: no prompts at {cfg.data.path}"
    )
    if cfg.round.eval:
        assert prompt_files(ROOT / cfg.round.eval.path), f"{path.name}: no eval prompts at {cfg.round.eval.path}"


def test_shipped_configs_exist():
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


def error_of(mutate) -> str:
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    return str(e.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda r: r.update(learner={"lrr": 1}),
            "learner.lrr: unknown field; allowed here: device, epochs, logprob_check_rows, lr",
        ),
        (lambda r: r.update(learner={"lr": -1}), "learner.lr: Input should be greater than 0 (got -1)"),
        (lambda r: r["judge"].update(type="gpt"), "judge.type: 'gpt' is not known; use one of 'rules'"),
        (
            lambda r: r["judge"]["checks"][0].update(limt=3),
            "judge.checks.0.limt: unknown field; allowed here: limit, type",
        ),
        (lambda r: r["judge"]["checks"].append({"limit": 3}), "judge.checks.1: needs a `type` field"),
        (lambda r: r.update(learner={"objective": {"type": "nope"}}), "learner.objective.type: 'nope' is not known"),
        (lambda r: r.pop("data"), "data: required field is missing"),
        (
            lambda r: r.update(sampler={"top_p": 1.5}),
            "sampler.top_p: Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            lambda r: r.update(learner={"minibatch_size": 6, "micro_batch_size": 4}),
            "set learner.micro_batch_size to a divisor",
        ),
        (lambda r: r.update(name="has space"), "name 'has space' must use only"),
    ],
)
def test_bad_config_names_field_and_fix(mutate, expected):
    assert expected in error_of(mutate)


def test_overrides_parse_yaml_values_and_index_lists():
    raw = base()
    apply_override(raw, "learner.lr=1e-4")
    apply_override(raw, "judge.checks.0.limit=12")
    apply_override(raw, "sampler.top_p=0.9")
    cfg = validate_config(raw)
    assert (cfg.learner.lr, cfg.judge.checks[0].limit, cfg.sampler.top_p) == (1e-4, 12, 0.9)


@pytest.mark.parametrize(
    "item, expected",
    [
        ("learner.lr", "expected KEY=VALUE"),
        ("judge.checks.5.limit=1", "index '5' is not in a list of 1"),
        ("name.x=1", "name is a value, not a section"),
    ],
)
def test_bad_overrides(item, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_override(base(), item)


def test_redaction_masks_secret_values_but_keeps_env_var_names():
    out = redact({"judge": {"api_key": "sk-live", "api_key_env": "OPENAI_API_KEY", "headers": {"Authorization": "x"}}})
    assert out == {"judge": {"api_key": "***", "api_key_env": "OPENAI_API_KEY", "headers": {"Authorization": "***"}}}


def test_resume_conflicts_ignore_iterations_ray_and_placement_only():
    cfg = validate_config(base())
    saved = yaml.safe_load(to_yaml(cfg))
    assert resume_conflicts(saved, validate_config({**base(), "iterations": 9, "ray": {"num_cpus": 1}})) == []
    assert resume_conflicts(saved, validate_config({**base(), "seed": 3})) == ["seed"]
    # a node is gone: the same run continues with its actors placed elsewhere ...
    moved = {
        **base(),
        "sampler": {"resources": {"node_a": 1}, "num_cpus": 0, "replicas": 2},
        "judging": {"actors": 3, "resources": {"node_a": 0.1}},
        "learner": {"num_gpus": 1, "resources": {"gpu_node": 1}},
    }
    assert resume_conflicts(saved, validate_config(moved)) == []
    # ... but what it samples and how it learns may not change
    assert resume_conflicts(saved, validate_config({**base(), "sampler": {"temperature": 0.5}})) == [
        "sampler.temperature"
    ]


def test_a_run_resumes_with_the_learner_ranks_it_started_with():
    """Another number of ranks sums gradients in another order (equal within 1e-5, not bit for
    bit), so a resume with it is refused, naming the field; where the ranks sit may change."""
    cfg = validate_config(base())
    saved = yaml.safe_load(to_yaml(cfg))
    assert resume_conflicts(saved, validate_config({**base(), "learner": {"ranks": 2}})) == ["learner.ranks"]
    two = validate_config({**base(), "learner": {"ranks": 2}})
    spread = validate_config({**base(), "learner": {"ranks": 2, "placement": "spread"}})
    assert resume_conflicts(yaml.safe_load(to_yaml(two)), spread) == []
