from __future__ import annotations

import json
import os

import pytest

from alignloop.loop.cursor import Cursor
from alignloop.loop.store import RunState, RunStore, atomic_write_dir, atomic_write_text, read_jsonl, write_jsonl
from alignloop.records import Judgment


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    p = tmp_path / "a" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask, "artifacts get the umask's permissions, not mkstemp's 0600"


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
