"""W&B offline and MLflow (SQLite store) fed by the real cycle in-process on the tiny model: a
resumed run continues the same run in each, and every iteration arrives once. Integration: W&B
starts its own service process, and both backends take seconds to start."""

from __future__ import annotations

import json

import pytest

from alignloop.loop.config import validate_config
from tests.conftest import tiny_config, write_prompts
from tests.helpers import run_in_process

pytestmark = pytest.mark.integration


def test_wandb_offline_and_mlflow_continue_one_run_across_a_resume(tmp_path, tiny_model, monkeypatch):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = tiny_config(
        tiny_model,
        write_prompts(tmp_path / "p.jsonl"),
        tmp_path / "run",
        iterations=2,
        judging={"actors": 1},
        sampler={"replicas": 1},
        tracking={"backends": ["wandb", "mlflow"]},
    )
    run_in_process(validate_config(raw))
    metrics = run_in_process(validate_config({**raw, "iterations": 3}))
    track = tmp_path / "run" / "tracking"
    assert json.loads((tmp_path / "run" / "tracking.json").read_text()) == {"wandb": 3, "mlflow": 3}

    mlflow.set_tracking_uri(f"sqlite:///{track / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["alignloop"], output_format="list")
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train.pass_rate")
    assert [(m.step, m.value) for m in history] == [(m["iteration"], pytest.approx(m["pass_rate"])) for m in metrics]
    artifacts = mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "samples")
    assert [a.path for a in artifacts] == [f"samples/iter-{i:04d}.json" for i in (1, 2, 3)]
    # inside the run directory, not in ./mlruns of wherever the run was started
    assert sorted(p.name for p in (track / "mlartifacts").rglob("iter-*.json")) == [
        f"iter-{i:04d}.json" for i in (1, 2, 3)
    ]

    # W&B offline: each process writes its own offline directory for the same run id, which
    # `wandb sync` merges; the resumed process logged only the iteration the first had not.
    files = sorted((track / "wandb").glob("offline-run-*/run-tiny.wandb"))
    assert len(files) == 2 and all(b"train/pass_rate" in f.read_bytes() for f in files)
    assert files[1].read_bytes().count(b"train/pass_rate") * 2 == files[0].read_bytes().count(b"train/pass_rate")
