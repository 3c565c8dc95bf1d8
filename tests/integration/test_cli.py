"""The CLI as a user runs it: subprocesses of `python -m alignloop.loop.cli` (config errors,
--dry-run, `train`), and what importing it loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config, write_prompts

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, rows, name="t.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "alignloop.loop.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_dry_run_prints_resolved_config_and_writes_nothing(tmp_path):
    out = run_cli(
        "run", "configs/quickstart.yaml", "--dry-run", "--set", f"run_dir={tmp_path}/r", "--set", "learner.lr=2e-4"
    )
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["learner"]["lr"] == 2e-4 and cfg["sampler"]["backend"] == "hf"
    assert not (tmp_path / "r").exists()


def test_cli_config_error_exits_2_and_writes_nothing(tmp_path):
    out = run_cli("run", "configs/quickstart.yaml", "--set", f"run_dir={tmp_path}/r", "--set", "learner.lrr=1")
    assert out.returncode == 2
    assert "learner.lrr: unknown field" in out.stderr
    assert not (tmp_path / "r").exists()


def test_cli_missing_config_file():
    out = run_cli("run", "configs/nope.yaml")
    assert out.returncode == 2 and "no such config file" in out.stderr


def test_config_loading_does_not_import_torch_or_ray():
    code = "import sys, alignloop.loop.cli, alignloop.loop.config, alignloop.judges; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_train_command_writes_an_adapter_that_a_run_can_start_from(tmp_path, tiny_model):
    cfg = tiny_config(tiny_model, write_prompts(tmp_path / "p.jsonl"), tmp_path / "run")
    cfg["learner"]["objective"] = {"type": "cut", "downsample": None}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    data = write(
        tmp_path,
        [
            {"instruction": "the cat", "output": "the big red dog ran on the mat", "judgment": "Too long."},
            {"instruction": "the dog", "output": "yes", "judgment": None},
        ],
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignloop.loop.cli",
            "train",
            str(config),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "adapter"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "adapter" / "train_metrics.json").read_text())["n_negative"] == 1

    from alignloop.loop.config import validate_config
    from alignloop.policies.learner import Learner

    cfg["model"]["adapter"] = str(tmp_path / "adapter")
    learner = Learner(validate_config(cfg).model, validate_config(cfg).learner)
    saved = (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    assert learner.export().weights == saved, "a run starting from the adapter serves exactly it as version 0"

    bad = write(tmp_path, [{"instruction": "x"}], name="bad.jsonl")
    out = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "train", str(config), "--data", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "bad.jsonl:1: missing `output`" in out.stderr


@pytest.mark.parametrize(
    "args",
    [["--round", "2026-12-01", "--set", "learner.lrr=1"], ["--round", ".."]],
    ids=["config-error", "bad-round-id"],
)
def test_round_json_prints_its_line_when_it_exits_2(tmp_path, args):
    """A scheduler reads the JSON line: it is there on a refusal too, with the code."""
    out = run_cli("round", "configs/nightly.yaml", "--set", f"round.series_dir={tmp_path}/s", *args, "--json")
    assert out.returncode == 2, out.stderr
    line = json.loads(out.stdout.splitlines()[-1])
    assert line["code"] == 2 and line["round"] == args[1]
    assert not (tmp_path / "s").exists(), "a refused round writes nothing"
