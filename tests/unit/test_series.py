"""Pieces of nightly rounds that need no Ray: prompt sources, the ledger, the gate, the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignloop.loop.config import validate_config
from alignloop.loop.data import DataError, load_prompts, prompt_files
from alignloop.loop.lock import DirLock, Locked
from alignloop.loop.series import RoundEntry, Series, gate_verdict, round_config
from alignloop.loop.store import RunState, RunStore

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, *instructions: str, ids: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": t, **({"id": ids[i]} if ids else {})} for i, t in enumerate(instructions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_path_is_a_file_a_directory_a_glob_or_a_round_placeholder(tmp_path):
    write(tmp_path / "d" / "b.jsonl", "two")
    write(tmp_path / "d" / "a.jsonl", "one")
    (tmp_path / "d" / "notes.txt").write_text("not prompts")
    assert [p.name for p in prompt_files(tmp_path / "d")] == ["a.jsonl", "b.jsonl"]
    assert [p.id for p in load_prompts(str(tmp_path / "d" / "*.jsonl"))] == ["a-1", "b-1"]
    assert [p.id for p in load_prompts(str(tmp_path / "d" / "{round}.jsonl"), round_id="b")] == ["b-1"]
    with pytest.raises(DataError, match=r"\{round\} placeholder; it is filled in by `alignloop round`"):
        load_prompts(str(tmp_path / "d" / "{round}.jsonl"))
    with pytest.raises(DataError, match="holds no .jsonl or .parquet prompt file"):
        load_prompts(str(tmp_path / "d" / "*.parquet"))
    with pytest.raises(DataError, match="no such prompt file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_an_id_in_two_files_names_both(tmp_path):
    write(tmp_path / "a.jsonl", "one", ids=["x"])
    write(tmp_path / "b.jsonl", "two", "three", ids=["y", "x"])
    with pytest.raises(DataError, match=r"b.jsonl:2: duplicate id 'x' \(first at .*a.jsonl:1\)"):
        load_prompts(str(tmp_path / "*.jsonl"))


def test_the_ledger_skips_what_other_rounds_drew_by_content(tmp_path):
    series = Series(tmp_path / "s")
    night1 = load_prompts(write(tmp_path / "n1.jsonl", "alpha", "beta"))
    series.record_drawn("n1", night1)
    night2 = load_prompts(write(tmp_path / "n2.jsonl", "beta", "gamma", "gamma", ids=["other-id", "g1", "g2"]))
    assert [p.id for p in series.new_prompts(night2, "n2")] == ["g1"], "same text under another id is not new, nor a repeat"
    assert [p.id for p in series.new_prompts(night1, "n1")] == ["n1-1", "n1-2"], "a round's own draw stays its own"
    series.record_drawn("n1", night1)  # a rerun records its draw once
    assert len(series.ledger()) == 2


def test_gate_verdicts():
    cfg = validate_config({"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "rules", "checks": [{"type": "finished"}]},
                           "round": {"eval": {"path": "e.jsonl", "margin": 0.05}}})
    assert gate_verdict(cfg, {"pass_rate": 0.5}, {"pass_rate": 0.46})[0] is True, "within the margin"
    ok, why = gate_verdict(cfg, {"pass_rate": 0.5}, {"pass_rate": 0.4})
    assert not ok and "fell 0.500 -> 0.400, more than the margin 0.05; current stays" in why
    ok, why = gate_verdict(cfg, {"pass_rate": 0.5}, {"pass_rate": None})
    assert not ok and "gave no pass_rate" in why
    plain = cfg.model_copy(update={"round": cfg.round.model_copy(update={"eval": None})})
    assert gate_verdict(plain, None, None) == (True, "promoted (no eval gate configured)")


def test_a_round_is_an_ordinary_run_of_its_drawn_prompts(tmp_path):
    cfg = validate_config({"name": "t", "data": {"path": "p/{round}.jsonl", "prompts_per_iteration": 16},
                           "judge": {"type": "rules", "checks": [{"type": "finished"}]}})
    rcfg = round_config(cfg, tmp_path / "rounds" / "r1", n_prompts=5)
    assert rcfg.resolved_run_dir == tmp_path / "rounds" / "r1"
    assert rcfg.data.path == str(tmp_path / "rounds" / "r1" / "prompts.jsonl") and rcfg.data.prompts_per_iteration == 5
    assert cfg.series_dir == Path("runs/t")


def test_series_file_round_trip_and_damage(tmp_path):
    series = Series(tmp_path)
    series.put(RoundEntry(id="a", status="promoted", iterations=2, adapter_version=2))
    series.put(RoundEntry(id="b", status="rejected", iterations=1, adapter_version=3))
    series.put(RoundEntry(id="c"))
    assert series.promoted().id == "a" and series.iterations_done() == 3
    series.path.write_text("{not json")
    with pytest.raises(Exception, match="damaged series file"):
        series.rounds()


def test_state_json_of_an_older_run_still_loads(tmp_path):
    store = RunStore(tmp_path)
    store.state_path.write_text(json.dumps({"iteration": 2, "step": "learn", "adapter_version": 2,
                                            "adapter_checksum": "abc", "data": {}}))
    state = store.load_state()
    assert (state.base, state.origin, state.last_learned()) == (0, None, 2)


HOLD = """
import sys, time
from alignloop.loop.lock import DirLock
with DirLock(sys.argv[1], "series"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_holder_at_a_time_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        with pytest.raises(Locked, match=rf"in use by another alignloop process \(pid {holder.pid} on .*never two writers on one series"):
            with DirLock(tmp_path, "series"):
                pass
        assert time.perf_counter() - start < 1, "the second process must be refused at once, not wait"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with DirLock(tmp_path, "series") as lock:  # the kernel released the dead holder's lock
        assert lock.took_over["pid"] == holder.pid
    with DirLock(tmp_path, "series") as lock:
        assert lock.took_over is None, "a clean exit leaves no holder behind"


def test_a_second_run_on_a_busy_run_directory_exits_6_and_writes_nothing(tmp_path):
    import yaml

    run_dir = tmp_path / "run"
    config = tmp_path / "c.yaml"
    write(tmp_path / "p.jsonl", "one", "two")
    config.write_text(yaml.safe_dump({"name": "t", "run_dir": str(run_dir), "data": {"path": str(tmp_path / "p.jsonl"),
                                      "prompts_per_iteration": 2}, "judge": {"type": "rules", "checks": [{"type": "finished"}]}}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["run", str(config)], ["run", str(config), "--overwrite"]):
            out = subprocess.run([sys.executable, "-m", "alignloop.loop.cli", *args], capture_output=True, text=True, cwd=ROOT)
            assert out.returncode == 6 and "in use by another alignloop process" in out.stderr, out.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"], "the refused runs must write nothing"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_a_night_whose_prompt_file_has_not_arrived_exits_5_without_starting_anything(tmp_path):
    import yaml

    config = tmp_path / "n.yaml"
    config.write_text(yaml.safe_dump({
        "name": "n", "data": {"path": str(tmp_path / "prompts" / "{round}.jsonl")},
        "judge": {"type": "rules", "checks": [{"type": "finished"}]}, "round": {"series_dir": str(tmp_path / "s")}}))
    out = subprocess.run([sys.executable, "-m", "alignloop.loop.cli", "round", str(config), "--round", "2026-12-02", "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 5 and "no new prompts in" in out.stderr and "2026-12-02.jsonl" in out.stderr, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["code"] == 5 and summary["series"] == str(tmp_path / "s")
    assert not (tmp_path / "s" / "series.json").exists() and not (tmp_path / "s" / "rounds").exists()
    bad = subprocess.run([sys.executable, "-m", "alignloop.loop.cli", "round", str(config), "--round", "../x"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--round '../x'" in bad.stderr
