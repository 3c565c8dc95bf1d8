from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.loop.config import ConfigError, validate_config
from alignloop.loop.cursor import Cursor
from alignloop.loop.store import (
    RunState,
    RunStore,
    atomic_write_dir,
    atomic_write_text,
    check_run_dir,
    read_jsonl,
    write_jsonl,
)
from alignloop.records import Judgment


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    p = tmp_path / "a" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]
    assert p.stat().st_mode & 0o777 == 0o600, "a run's files are its owner's only (tests/unit/test_file_modes.py)"


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_dir_swaps_whole_directory(tmp_path):
    d = tmp_path / "adapter"
    atomic_write_dir(d, {"a": b"1", "b": b"2"})
    atomic_write_dir(d, {"a": b"3"})
    assert sorted(x.name for x in d.iterdir()) == ["a"] and (d / "a").read_bytes() == b"3"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["adapter"]


def test_jsonl_roundtrip(tmp_path):
    js = [
        Judgment(sample_id="s1", verdict="positive", score=1.0, judge="r"),
        Judgment(sample_id="s2", judge="r", error="Timeout"),
    ]
    write_jsonl(tmp_path / "j.jsonl", js)
    assert read_jsonl(tmp_path / "j.jsonl", Judgment) == js


@pytest.mark.parametrize(
    "step, expected", [("sample", (3, "judge")), ("judge", (3, "learn")), ("learn", (4, "sample"))]
)
def test_next_step(step, expected):
    assert RunState(iteration=3, step=step).next_step() == expected


def test_fresh_state_starts_at_iteration_one():
    assert RunState().next_step() == (1, "sample")


def test_state_roundtrip_and_metrics_rebuilt_from_iteration_files(tmp_path):
    store = RunStore(tmp_path)
    assert store.load_state() is None and not store.has_progress()
    cursor = Cursor(stream={"epoch": 0, "position": 4, "order": None})
    store.save_state(RunState(iteration=2, step="judge", adapter_version=1, cursor=cursor))
    assert store.load_state() == RunState(iteration=2, step="judge", adapter_version=1, cursor=cursor)
    assert json.loads(store.state_path.read_text())["data"] == {"stream": {"epoch": 0, "position": 4, "order": None}}
    store.write_metrics(1, {"iteration": 1, "pass_rate": 0.25})
    store.write_metrics(2, {"iteration": 2, "pass_rate": 0.5})
    store.write_metrics(2, {"iteration": 2, "pass_rate": 0.75})  # a redone step replaces, never duplicates
    assert [m["pass_rate"] for m in store.read_metrics()] == [0.25, 0.75]
    assert json.loads((tmp_path / "iter-0002" / "metrics.json").read_text())["pass_rate"] == 0.75


def test_a_directory_is_alignloops_by_its_marker_or_as_a_run_from_before_it(tmp_path):
    from alignloop.loop.store import is_run_dir, mark_run_dir, written_by_a_run

    d = tmp_path / "d"
    d.mkdir()
    (d / "config.yaml").write_text("mine: true\n")
    (d / "state.json").write_text("{}\n")
    assert not is_run_dir(d), "a config.yaml and a state.json of the user's do not make a run"
    (d / "iter-0001").mkdir()
    assert is_run_dir(d), "config.yaml and iter-NNNN/: a run from before the marker"
    (tmp_path / "e").mkdir()
    mark_run_dir(tmp_path / "e")
    assert is_run_dir(tmp_path / "e") and not is_run_dir(tmp_path / "missing")
    ours = ["config.yaml", "state.json", "iter-0012", "tracking", ".metrics.jsonl.k2j3.tmp", ".start-adapter.old"]
    theirs = ["notes.txt", "iter-notes", "offline-adapter", "report", ".lock", ".bashrc", ".config.yaml.bak"]
    assert [n for n in ours + theirs if written_by_a_run(n)] == ours


# hostile run directories (issue 22) ----------------------------------------------------------


def run_config(run_dir: Path):
    judge = {"type": "openai", "model": "m", "api_key_env": None}
    return validate_config({"name": "t", "run_dir": str(run_dir), "data": {"path": "p.jsonl"}, "judge": judge})


def a_run_at_iteration_one(root: Path) -> dict:
    """A run directory whose iteration 1 sample step finished: what --resume reads."""
    store = RunStore(root)
    atomic_write_text(root / "config.yaml", "name: t\n")
    store.save_samples(1, [], [])
    store.save_state(
        RunState(iteration=1, step="sample", cursor=Cursor(stream={"epoch": 0, "position": 1, "order": None}))
    )
    return json.loads(store.state_path.read_text())


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("iteration", "x", "field 'iteration' is 'x', not a whole number"),
        ("iteration", -1, "field 'iteration' is -1"),
        ("iteration", True, "field 'iteration' is True"),
        ("step", "teach", "field 'step' is 'teach', not one of sample, judge, learn"),
        ("adapter_version", 1.5, "field 'adapter_version' is 1.5"),
        ("adapter_checksum", 7, "field 'adapter_checksum' is 7, not a string or null"),
        ("origin_optimizer", "yes", "field 'origin_optimizer' is 'yes', not true or false"),
        ("data", [], "field 'data' is [], not an object"),
        ("data", {"stream": {"epoch": "0", "position": 1, "order": None}}, "field 'data.stream.epoch' is '0'"),
        ("data", {"stream": {"epoch": 0, "position": 1, "order": "abc"}}, "field 'data.stream.order' is 'abc'"),
        ("data", {"stream": None, "pending": 3}, "field 'data.pending' is 3"),
        ("data", {"stream": None, "ahead": {"x": {"step": "sample"}}}, "field 'data.ahead.x' is 'x'"),
        ("data", {"stream": None, "ahead": {"2": {"step": "nap"}}}, "field 'data.ahead.2.step' is 'nap'"),
        ("iteration", "x" * 10_000, "is 'xxxx"),
    ],
)
def test_resume_with_a_wrongly_typed_state_field_names_the_file_and_field(tmp_path, field, value, said):
    state = a_run_at_iteration_one(tmp_path / "run")
    (tmp_path / "run" / "state.json").write_text(json.dumps({**state, field: value}))
    with pytest.raises(ConfigError, match="state.json: damaged run directory") as e:
        check_run_dir(run_config(tmp_path / "run"), resume=True, overwrite=False)
    assert said in str(e.value) and len(str(e.value)) < 400


def test_a_state_json_that_cannot_be_read_is_damage_not_a_fresh_run(tmp_path):
    a_run_at_iteration_one(tmp_path)
    store = RunStore(tmp_path)
    store.state_path.unlink()
    store.state_path.symlink_to(store.state_path)  # a loop: exists() says False
    with pytest.raises(ConfigError, match=r"state\.json: damaged run directory: cannot be read"):
        store.load_state()


@pytest.mark.parametrize("where", ["run_dir", "a parent of run_dir"])
def test_a_run_dir_that_is_a_file_is_a_config_error(tmp_path, where):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    run_dir = f if where == "run_dir" else f / "run"
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_run_dir(run_config(run_dir), resume=False, overwrite=False)
    assert f.read_text() == "mine"


@pytest.mark.parametrize("damage", ["symlink loop", "directory", "dangling symlink"])
def test_a_metrics_file_that_cannot_be_read_is_damage_not_zero_iterations(tmp_path, damage):
    store = RunStore(tmp_path)
    store.write_metrics(1, {"iteration": 1, "pass_rate": 0.5})
    p = tmp_path / "metrics.jsonl"
    p.unlink()
    if damage == "symlink loop":
        p.symlink_to(p)
    elif damage == "directory":
        p.mkdir()
    else:
        p.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"metrics\.jsonl: damaged run directory: cannot be read"):
        store.read_metrics()
