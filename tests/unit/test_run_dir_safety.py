"""A run, --overwrite, `train --out` and `round --round` touch only directories alignloop made,
and within them only what it wrote: a mistyped path never deletes the user's files.

Pure: these call the functions `alignloop run` and `alignloop round` call (check_run_dir,
prepare_run_dir, run_round), with no model and no Ray."""

from __future__ import annotations

import pytest

from alignloop.loop.config import ConfigError, validate_config
from alignloop.loop.series import check_round_id, run_round
from alignloop.loop.store import MARKER, RunState, RunStore, check_run_dir, prepare_run_dir


def config(run_dir, **over):
    return validate_config(
        {
            "name": "t",
            "run_dir": str(run_dir),
            "data": {"path": "p.jsonl"},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            **over,
        }
    )


def users_dir(path):
    """A directory of someone's own files, among them a config.yaml of theirs."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text("mine: true\n")
    (path / "notes.txt").write_text("keep me\n")
    (path / "photos").mkdir()
    (path / "photos" / "a.jpg").write_bytes(b"jpeg")
    return path


def snapshot(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("overwrite", [False, True], ids=["run", "overwrite"])
def test_a_directory_of_the_users_files_is_refused_and_left_as_it_was(tmp_path, overwrite):
    d = users_dir(tmp_path / "mine")
    before = snapshot(d)
    with pytest.raises(ConfigError) as e:
        prepare_run_dir(config(d), resume=False, overwrite=overwrite)
    msg = str(e.value)
    assert str(d) in msg and "not an alignloop run directory" in msg and "config.yaml, notes.txt, photos" in msg
    assert "set run_dir to a new directory" in msg
    assert snapshot(d) == before, "nothing of the user's may change, their config.yaml included"


@pytest.mark.parametrize("where", ["root", "home", "cwd"])
def test_overwrite_refuses_root_home_and_the_current_directory_even_when_empty(tmp_path, monkeypatch, where):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    run_dir = {"root": "/", "home": str(home), "cwd": "."}[where]
    what = {"root": "the filesystem root", "home": "your home directory", "cwd": "the current directory"}[where]
    with pytest.raises(ConfigError, match=f"--overwrite: .* is {what}, which alignloop never clears"):
        check_run_dir(config(run_dir), resume=False, overwrite=True)  # reads only: safe to aim at /
    if where != "root":
        with pytest.raises(ConfigError):
            prepare_run_dir(config(run_dir), resume=False, overwrite=True)
        assert not any((home, cwd)[where == "cwd"].iterdir()), "a refused --overwrite writes nothing"


def test_a_run_goes_into_a_new_or_empty_directory_and_marks_it(tmp_path):
    for d in (tmp_path / "new" / "run", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        store = prepare_run_dir(config(d), resume=False, overwrite=False)
        assert sorted(p.name for p in d.iterdir()) == [MARKER, "config.yaml"]
        assert store.root == d
    # A lock left by a run refused or killed before it wrote anything does not make it foreign.
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").write_text("")
    prepare_run_dir(config(tmp_path / "locked"), resume=False, overwrite=False)
    assert (tmp_path / "locked" / MARKER).is_file()


def test_a_file_as_run_dir_is_refused(tmp_path):
    (tmp_path / "f").write_text("data")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_run_dir(config(tmp_path / "f"), resume=False, overwrite=True)
    assert (tmp_path / "f").read_text() == "data"


def test_overwrite_removes_only_what_a_run_wrote(tmp_path):
    d = tmp_path / "run"
    prepare_run_dir(config(d), resume=False, overwrite=False)
    store = RunStore(d)
    store.save_state(RunState(iteration=1, step="sample"))
    for name in ("metrics.jsonl", "placement.jsonl", "tracking.json", ".state.json.x1y2.tmp"):
        (d / name).write_text("run's\n")
    for name in ("iter-0001", "tracking/tensorboard", "start-adapter", ".start-adapter.old"):
        (d / name).mkdir(parents=True)
        (d / name / "f").write_text("run's\n")
    (d / ".lock").write_text("")
    (d / "notes.txt").write_text("the user's\n")  # put beside the run by its user: kept
    (d / "iter-notes").mkdir()
    (d / "offline-adapter").mkdir()  # `alignloop train`'s default output: not the run's to delete
    prepare_run_dir(config(d, seed=1), resume=False, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == [
        ".alignloop-run",
        ".lock",
        "config.yaml",
        "iter-notes",
        "notes.txt",
        "offline-adapter",
    ]
    assert "seed: 1" in (d / "config.yaml").read_text()


def legacy_run(d, cfg):
    """A run directory written before the marker existed: config.yaml, state.json, iter-0001/."""
    from alignloop.loop.config import to_yaml

    d.mkdir(parents=True)
    (d / "config.yaml").write_text(to_yaml(cfg))
    RunStore(d).save_state(RunState())
    (d / "iter-0001").mkdir()
    (d / "iter-0001" / "prompts.jsonl").write_text("")


def test_a_run_from_before_the_marker_still_resumes_and_gets_the_marker(tmp_path):
    cfg = config(tmp_path / "old")
    legacy_run(tmp_path / "old", cfg)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        check_run_dir(cfg, resume=False, overwrite=False)
    prepare_run_dir(cfg, resume=True, overwrite=False)
    assert (tmp_path / "old" / MARKER).is_file() and (tmp_path / "old" / "iter-0001").is_dir()
    legacy_run(tmp_path / "old2", cfg)
    prepare_run_dir(config(tmp_path / "old2"), resume=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "old2").iterdir()) == [MARKER, "config.yaml"]


@pytest.mark.parametrize("bad", ["..", ".", "", ".hidden", "a/b", "../x", "/abs", "a\\b", "two words", "été", "a\x00b"])
def test_bad_round_ids_are_refused(bad):
    with pytest.raises(ConfigError, match="a round id names the directory rounds/<id>"):
        check_round_id(bad)


@pytest.mark.parametrize("good", ["2026-12-01", "night_3", "v1.2", "a", "-x", "R..2"])
def test_plain_round_ids_pass(good):
    check_round_id(good)


def test_round_dotdot_is_refused_before_the_series_is_touched(tmp_path):
    series = tmp_path / "series"
    cfg = config(tmp_path / "run", round={"series_dir": str(series)})
    with pytest.raises(ConfigError, match=r"--round '\.\.'"):
        run_round(cfg, "..")
    assert not series.exists()


def test_promotion_never_replaces_a_current_that_alignloop_did_not_make(tmp_path):
    from alignloop.loop.config import ConfigError
    from alignloop.loop.series import Series

    series = Series(tmp_path)
    (tmp_path / "current").write_text("the user's notes")
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="not the symlink alignloop keeps"):
        series.promote(tmp_path / "a")
    assert (tmp_path / "current").read_text() == "the user's notes"
    (tmp_path / "current").unlink()
    series.promote(tmp_path / "a")
    series.promote(tmp_path / "a")  # its own symlink is replaced
    assert (tmp_path / "current").resolve() == (tmp_path / "a").resolve()
