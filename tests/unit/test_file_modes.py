"""Files that hold prompts, responses, judgments, configs or cached replies are created
readable by their owner only (0600, the directories alignloop makes for them 0700), unless the
config sets shared_files: then the umask decides. Modes only: the bytes written are the same."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from alignloop.judges.cache import JudgmentCache
from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from alignloop.judges.prompting import Parsed
from alignloop.loop.config import validate_config
from alignloop.loop.cursor import Cursor
from alignloop.loop.store import RunState, RunStore, atomic_write_dir, prepare_run_dir, share_files
from alignloop.records import Judgment, Message, Prompt, Sample
from tests.fake_openai_server import FakeOpenAIServer
from tests.judge_fakes import prompts_and_samples


@pytest.fixture(autouse=True)
def private_again():
    """prepare_run_dir sets the process-wide mode from its config; every test starts and ends private."""
    share_files(False)
    yield
    share_files(False)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): mode(p) for p in sorted(root.rglob("*")) if p.name != ".lock"}


def run_config(run_dir: Path, **over):
    judge = {"type": "openai", "model": "m", "api_key_env": None}
    raw = {"name": "t", "run_dir": str(run_dir), "data": {"path": "p.jsonl"}, "judge": judge, **over}
    return validate_config(raw)


def write_a_run(run_dir: Path, **over) -> RunStore:
    """What a run writes in its first iteration, through the store."""
    store = prepare_run_dir(run_config(run_dir, **over), resume=False, overwrite=False)
    prompt = Prompt(id="p", messages=[Message(role="user", content="a private question")])
    store.save_samples(1, [prompt], [Sample(id="s", prompt_id="p", response="an answer", policy_version=0)])
    store.save_judgments(1, [Judgment(sample_id="s", judge="j", verdict="positive", score=1.0)])
    store.write_metrics(1, {"iteration": 1, "pass_rate": 1.0})
    store.log_placement({"learner": "node-a"})
    atomic_write_dir(store.iter_dir(1) / "adapter", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"w"})
    store.save_state(RunState(iteration=1, step="learn", cursor=Cursor()))
    return store


def test_a_runs_files_are_its_owners_only(tmp_path, umask_022):
    root = tmp_path / "runs" / "t"
    write_a_run(root)
    found = modes(root)
    assert found == {name: (0o700 if (root / name).is_dir() else 0o600) for name in found}, (
        "every file 0600, every directory 0700"
    )
    assert {"config.yaml", "state.json", "metrics.jsonl", "placement.jsonl", "iter-0001/judgments.jsonl"} <= set(found)
    assert {"iter-0001/samples.jsonl", "iter-0001/metrics.json", "iter-0001/adapter/adapter_config.json"} <= set(found)
    assert mode(root) == 0o700 and mode(tmp_path / "runs") == 0o700, "the directories alignloop made"


def test_shared_files_get_the_umasks_permissions_and_the_same_bytes(tmp_path, umask_022):
    private = write_a_run(tmp_path / "private").root
    shared = write_a_run(tmp_path / "shared", shared_files=True).root
    found = modes(shared)
    assert found == {name: (0o755 if (shared / name).is_dir() else 0o644) for name in found}
    for name in ("iter-0001/samples.jsonl", "iter-0001/judgments.jsonl", "state.json", "metrics.jsonl"):
        assert (shared / name).read_bytes() == (private / name).read_bytes()


def test_an_existing_directory_of_alignloops_keeps_its_mode_when_files_are_shared(tmp_path, umask_022):
    root = tmp_path / "run"
    write_a_run(root, shared_files=True)
    assert mode(root) == 0o755


def test_the_judge_cache_and_its_directories_are_owner_only(tmp_path, umask_022):
    path = tmp_path / "cache" / "judge-cache" / "judgments.sqlite"
    cache = JudgmentCache(path)
    cache.put("k", Parsed(verdict="positive", score=1.0, critique="fine", quotes=()))
    files = [p for p in path.parent.iterdir()]
    assert {p.name for p in files} >= {"judgments.sqlite", "judgments.sqlite-wal", "judgments.sqlite-shm"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert mode(path.parent) == mode(tmp_path / "cache") == 0o700


def test_a_judge_run_through_the_cache_leaves_it_owner_only(tmp_path, umask_022):
    with FakeOpenAIServer() as server:
        cfg = OpenAIJudgeConfig(
            model="m", base_url=server.url, api_key_env=None, cache_path=str(tmp_path / "c" / "j.sqlite")
        )
        prompts, samples = prompts_and_samples(["good answer"])
        (j,) = asyncio.run(OpenAIJudge(cfg).judge(prompts, samples))
    assert j.verdict == "positive" and mode(tmp_path / "c" / "j.sqlite") == 0o600


def test_the_tracking_directory_is_made_owner_only(tmp_path, umask_022):
    from alignloop.loop.tracking import Tracking

    cfg = run_config(tmp_path / "run", tracking={"backends": [], "dir": str(tmp_path / "logs" / "tb")})
    Tracking(cfg, RunStore(tmp_path / "run"))
    assert mode(tmp_path / "logs" / "tb") == mode(tmp_path / "logs") == 0o700
