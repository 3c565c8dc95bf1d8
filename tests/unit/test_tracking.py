"""Tracking: the real cycle run in-process (LocalActors, no Ray) on the tiny model sends every
iteration to TensorBoard once, a resumed run continues the same curves, and a backend whose
package is missing is a config error that says what to install. W&B (whose offline mode starts
its own service process) and MLflow are tests/integration/test_tracking.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from alignloop.loop.config import ConfigError, validate_config
from alignloop.loop.tracking import check_backends, scalars
from tests.conftest import tiny_config, write_prompts
from tests.helpers import run_in_process


def scalar_steps(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_gets_every_iteration_once_across_a_resume(tmp_path, tiny_model):
    raw = tiny_config(
        tiny_model,
        write_prompts(tmp_path / "p.jsonl"),
        tmp_path / "run",
        iterations=2,
        judging={"actors": 1},
        sampler={"replicas": 1},
    )
    first = run_in_process(validate_config(raw))
    tb = tmp_path / "run" / "tracking" / "tensorboard"
    assert [s for s, _ in scalar_steps(tb, "train/pass_rate")] == [1, 2]

    # As if the process died after sending iteration 2 but before recording it: the resumed
    # run sends 2 again, and TensorBoard's purge keeps exactly one value per step.
    (tmp_path / "run" / "tracking.json").write_text(json.dumps({"tensorboard": 1}))
    # Event files are read in name order: their creation second, then a per-process counter
    # that sorts as text (...10 before ...9). A resumed run is a later process; in this one
    # process the second writer must start in a later second, or it may be read first.
    time.sleep(1.1)
    metrics = run_in_process(validate_config({**raw, "iterations": 3}))
    steps = scalar_steps(tb, "train/pass_rate")
    assert [s for s, _ in steps] == [1, 2, 3]
    assert [v for _, v in steps] == pytest.approx([m["pass_rate"] for m in metrics])
    assert [m["pass_rate"] for m in metrics[:2]] == [m["pass_rate"] for m in first]
    assert [s for s, _ in scalar_steps(tb, "time/tokens_per_s")] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "tracking.json").read_text()) == {"tensorboard": 3}


def test_scalars_group_metrics_and_skip_what_is_not_a_number():
    out = scalars(
        {
            "pass_rate": 0.5,
            "judge_cost_usd": 0.1,
            "sample_s": 2.0,
            "tokens_sampled": 100,
            "adapter_checksum": "abc",
            "mean_score": None,
            "flag": True,
        }
    )
    assert out == {
        "train/pass_rate": 0.5,
        "judge/judge_cost_usd": 0.1,
        "time/sample_s": 2.0,
        "train/tokens_sampled": 100.0,
        "time/tokens_per_s": 50.0,
    }


def test_a_backend_without_its_package_is_a_config_error(monkeypatch):
    import importlib.util

    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "p.jsonl"},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "tracking": {"backends": ["tensorboard", "wandb"]},
        }
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(
        ConfigError, match=r"lists 'wandb' but the wandb package is not installed; pip install 'alignloop\[wandb\]'"
    ):
        check_backends(cfg)
    with pytest.raises(ConfigError, match="lists a backend twice"):
        validate_config(
            {
                "name": "t",
                "data": {"path": "p.jsonl"},
                "judge": {"type": "rules", "checks": [{"type": "finished"}]},
                "tracking": {"backends": ["tensorboard", "tensorboard"]},
            }
        )
