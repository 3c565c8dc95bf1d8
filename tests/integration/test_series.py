"""Nightly rounds across processes: one holder of a series' lock at a time (a second process
is refused at once, a dead holder's lock is taken over), and the CLI's exit codes for a busy
run directory and a night whose prompts have not arrived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from alignloop.loop.lock import DirLock, Locked
from tests.helpers import ROOT, write_instructions

pytestmark = pytest.mark.integration


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
        with pytest.raises(
            Locked,
            match=rf"in use by another alignloop process \(pid {holder.pid} on .*never two writers on one series",
        ):
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
    run_dir = tmp_path / "run"
    config = tmp_path / "c.yaml"
    write_instructions(tmp_path / "p.jsonl", "one", "two")
    config.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "run_dir": str(run_dir),
                "data": {"path": str(tmp_path / "p.jsonl"), "prompts_per_iteration": 2},
                "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            }
        )
    )
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["run", str(config)], ["run", str(config), "--overwrite"]):
            out = subprocess.run(
                [sys.executable, "-m", "alignloop.loop.cli", *args], capture_output=True, text=True, cwd=ROOT
            )
            assert out.returncode == 6 and "in use by another alignloop process" in out.stderr, out.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"], "the refused runs must write nothing"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_a_night_whose_prompt_file_has_not_arrived_exits_5_without_starting_anything(tmp_path):
    config = tmp_path / "n.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "n",
                "data": {"path": str(tmp_path / "prompts" / "{round}.jsonl")},
                "judge": {"type": "rules", "checks": [{"type": "finished"}]},
                "round": {"series_dir": str(tmp_path / "s")},
            }
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "round", str(config), "--round", "2026-12-02", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 5 and "no new prompts in" in out.stderr and "2026-12-02.jsonl" in out.stderr, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["code"] == 5 and summary["series"] == str(tmp_path / "s")
    assert not (tmp_path / "s" / "series.json").exists() and not (tmp_path / "s" / "rounds").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "round", str(config), "--round", "../x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--round '../x'" in bad.stderr
