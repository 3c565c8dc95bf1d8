"""Bad input as a new user meets it, through the CLI in a subprocess: each gets exit 2, a
message that says what to do, and writes nothing; secrets never reach the screen or the run
directory; a damaged run directory is named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignloop.loop.config import validate_config
from tests.helpers import openai_judge, refused, run_cli

pytestmark = pytest.mark.integration

KEY = "sk-proj-Zx81kdQ0aLmPq77Rt5UvWx9Yz"


def config(tmp_path: Path, **over) -> Path:
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"instruction": f"q{i}"}) + "\n" for i in range(4)))
    raw = {
        "name": "t",
        "run_dir": str(tmp_path / "run"),
        "data": {"path": str(prompts), "prompts_per_iteration": 2},
        "judge": {"type": "rules", "checks": [{"type": "finished"}]},
        **over,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_an_api_key_where_the_variable_name_goes_is_refused_and_never_printed(tmp_path):
    for args in (["run", "--dry-run"], ["run"]):
        out = run_cli(*args[:1], str(config(tmp_path, judge=openai_judge(api_key_env=KEY))), *args[1:])
        refused(out, "judge.api_key_env: this looks like an API key", "export OPENAI_API_KEY=<your key>")
        assert KEY not in out.stderr + out.stdout
    refused(
        run_cli("run", str(config(tmp_path, judge=openai_judge(api_key_env="my-key")))),
        "must be an environment variable name",
    )
    assert not (tmp_path / "run").exists()


def test_a_missing_key_variable_or_an_unreachable_endpoint_stops_before_anything_starts(tmp_path):
    refused(
        run_cli("run", str(config(tmp_path, judge=openai_judge(api_key_env="ALIGNLOOP_TEST_NO_SUCH_KEY")))),
        "environment variable ALIGNLOOP_TEST_NO_SUCH_KEY is not set",
    )
    out = run_cli("run", str(config(tmp_path, judge=openai_judge(api_key_env=None))))
    refused(out, "cannot reach http://127.0.0.1:9/v1", "check judge.base_url")
    assert "starting Ray" not in out.stdout and not (tmp_path / "run").exists()


def test_files_that_are_not_what_they_claim(tmp_path):
    bad_config = tmp_path / "latin1.yaml"
    bad_config.write_bytes(b"name: t\ndata: {path: caf\xe9.jsonl}\n")
    refused(run_cli("run", str(bad_config)), "latin1.yaml:2: not UTF-8 text (byte 24")
    refused(run_cli("run", str(tmp_path)), "is a directory; pass the YAML config file")
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    refused(run_cli("run", str(config(tmp_path, data={"path": str(data)}))), "latin1.jsonl:2: not UTF-8 text")
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"PAR1 this is not parquet")
    refused(
        run_cli("run", str(config(tmp_path, data={"path": str(parquet)}))),
        "broken.parquet: not a readable Parquet file",
    )
    (tmp_path / "not-a-model").mkdir()
    refused(
        run_cli("run", str(config(tmp_path, model={"path": str(tmp_path / "not-a-model")}))),
        "is a directory but not a Hugging Face model (no config.json",
    )
    assert not (tmp_path / "run").exists()


def test_settings_that_cannot_work_are_config_errors_before_ray(tmp_path):
    refused(
        run_cli("run", str(config(tmp_path, data={"path": str(tmp_path / "p.jsonl"), "prompts_per_iteration": 9}))),
        "data.prompts_per_iteration (9) is larger than the dataset (4 prompts)",
    )
    refused(
        run_cli(
            "run", str(config(tmp_path, learner={"objective": {"type": "rloo"}}, sampler={"samples_per_prompt": 1}))
        ),
        "'rloo' compares the samples of each prompt",
        "set it to at least 2",
    )
    # The packages are hidden rather than tested for: the dev extra installs Ray's dashboard
    # packages, and an `if not installed` here would never run where the suite runs.
    refused(
        run_cli("run", str(config(tmp_path, sampler={"backend": "vllm"})), hide=("vllm",)),
        "sampler.backend is 'vllm' but vLLM is not installed",
    )
    refused(
        run_cli("run", str(config(tmp_path, ray={"dashboard": True})), hide=("aiohttp_cors",)),
        "ray.dashboard: true needs Ray's dashboard packages",
    )
    assert not (tmp_path / "run").exists(), "a config error must write nothing"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model) -> tuple[Path, dict]:
    """A real two-iteration run (in-process, the tiny model) to damage in copies."""
    from tests.conftest import tiny_config, write_prompts
    from tests.helpers import run_in_process

    tmp = tmp_path_factory.mktemp("finished")
    raw = tiny_config(
        tiny_model,
        write_prompts(tmp / "p.jsonl"),
        tmp / "run",
        iterations=2,
        judging={"actors": 1},
        sampler={"replicas": 1},
        tracking={"backends": []},
    )
    run_in_process(validate_config(raw))
    return tmp / "run", raw


def damaged_copy(finished_run, tmp_path, damage) -> Path:
    import shutil

    run, raw = finished_run
    shutil.copytree(run, tmp_path / "run")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**raw, "run_dir": str(tmp_path / "run")}))
    damage(tmp_path / "run")
    return path


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda r: (r / "iter-0002" / "judgments.jsonl").unlink(),
            "iter-0002/judgments.jsonl: damaged run directory: missing, though state.json records iteration 2 learn as finished",
        ),
        (
            lambda r: (r / "iter-0001" / "judgments.jsonl").write_text(
                "".join((r / "iter-0001" / "judgments.jsonl").read_text().splitlines(True)[:-2])
            ),
            "iter-0001/judgments.jsonl: damaged run directory: 10 judgments for 12 samples",
        ),
        (
            lambda r: (r / "iter-0002" / "adapter" / "adapter_model.safetensors").write_bytes(b"not the adapter"),
            "adapter_model.safetensors: damaged run directory: its sha256 is not the one state.json records for adapter v2",
        ),
        (lambda r: (r / "iter-0002" / "learner_state.pt").unlink(), "learner_state.pt: damaged run directory: missing"),
        (
            lambda r: (r / "state.json").write_text('{"iteration": 2, "step": "le'),
            "state.json: damaged run directory: not valid JSON",
        ),
        (
            lambda r: (r / "config.yaml").write_text("name: [unclosed\n"),
            "config.yaml: damaged run directory: not valid YAML",
        ),
    ],
    ids=[
        "judgments-deleted",
        "judgments-truncated",
        "adapter-corrupt",
        "optimizer-state-deleted",
        "state-truncated",
        "config-garbage",
    ],
)
def test_a_damaged_run_directory_is_reported_precisely(finished_run, tmp_path, damage, expected):
    path = damaged_copy(finished_run, tmp_path, damage)
    refused(run_cli("run", str(path), "--resume", "--set", "iterations=3"), expected, "--overwrite")


def test_damaged_metrics_are_rebuilt_and_a_damaged_state_stops_status(finished_run, tmp_path):
    path = damaged_copy(finished_run, tmp_path, lambda r: (r / "metrics.jsonl").write_text("garbage\n"))
    out = run_cli("status", str(tmp_path / "run"))
    assert (
        out.returncode == 0 and "metrics.jsonl was damaged" in out.stderr and "2 iteration(s) complete" in out.stdout
    ), out.stderr
    assert [
        json.loads(line)["iteration"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ] == [1, 2]
    (tmp_path / "run" / "state.json").write_text("{")
    refused(run_cli("status", str(tmp_path / "run")), "state.json: damaged run directory")
    assert path.exists()
