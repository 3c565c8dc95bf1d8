"""What goes to an experiment tracker is masked as config.yaml is: W&B receives the config
without the run's judge, but a round's eval judge (or a key pasted into any field) is in it."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from alignloop.loop.config import validate_config
from alignloop.loop.tracking import WandbTracker


def test_wandb_gets_the_config_with_credentials_masked(tmp_path, monkeypatch):
    sent = {}
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=lambda **kw: sent.update(kw)))
    judge = {"type": "openai", "model": "m", "base_url": "https://ann:pw-secret-4321@judge.example/v1"}
    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "p.jsonl"},
            "judge": {"type": "openai", "model": "m", "api_key_env": None},
            "round": {"eval": {"path": "eval.jsonl", "judge": judge}},
        }
    )
    WandbTracker(cfg, tmp_path, "t", 0)
    shown = str(sent["config"])
    assert "judge.example" in shown and "pw-secret-4321" not in shown
