"""The real loop on a real local Ray instance with a tiny random model: adapter broadcast is
verified, and a run killed with SIGKILL then resumed ends with the same artifacts as an
uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config, write_prompts
from tests.helpers import alignloop, artifacts, assert_same, finish, state_of, wait_for, write_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_two_iterations_broadcast_and_status(tmp_path, tiny_model):
    """Drives the steps in this process so the test can ask the sampler actors what they serve."""
    import ray

    from alignloop.loop.config import load_config
    from alignloop.loop.data import load_prompts
    from alignloop.loop.roles.ray_roles import RayRoles
    from alignloop.loop.roles.ray_runtime import start_ray
    from alignloop.loop.schedules.sequential import iteration
    from alignloop.loop.steps import Steps
    from alignloop.loop.store import prepare_run_dir

    cfg = load_config(write_config(tmp_path, tiny_model, "run", sampler={"replicas": 2}))
    store = prepare_run_dir(cfg, resume=False, overwrite=False)
    start_ray(cfg.ray)
    # A local instance advertises (and so binds) loopback only, and runs no dashboard.
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    actors = RayRoles(cfg)

    def served() -> list[tuple]:
        return [tuple(v) for v in ray.get([h.serving.remote() for h in actors.samplers.handles])]

    try:
        steps = Steps(cfg, store, actors, load_prompts(cfg.data.path))
        start = steps.restore()
        assert served() == [(0, start.payload.checksum)] * 2
        published = iteration(steps, 1).payload
        assert published.version == 1
        # After iteration 1 every sampler serves exactly the adapter the learner published.
        assert served() == [(1, published.checksum)] * 2
        learner_now = actors.learner.export().payload
        assert learner_now.checksum == published.checksum
        on_disk = (store.iter_dir(1) / "adapter" / "adapter_model.safetensors").read_bytes()
        assert on_disk == published.weights
        iteration(steps, 2)
        samples = [json.loads(line) for line in (store.iter_dir(2) / "samples.jsonl").read_text().splitlines()]
        assert {s["policy_version"] for s in samples} == {1}
        assert len(samples) == 4 * 3
    finally:
        actors.shutdown()
        ray.shutdown()
    metrics = store.read_metrics()
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert [m["adapter_version"] for m in metrics] == [1, 2]
    assert all(m["n_samples"] == 12 and m["n_judge_errors"] == 0 for m in metrics)
    assert not (store.iter_dir(1) / "learner_state.pt").exists() and (store.iter_dir(2) / "learner_state.pt").exists()
    out = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "status", str(store.root)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "2 iteration(s) complete" in out.stdout


# Each kill point holds for seconds, so the test cannot miss it: the slow judge keeps the run
# inside the judge step after (2, sample); 30 epochs keep it inside the learn step after (2, judge).
SLOW = dict(
    iterations=3,
    judge={"type": "python", "target": "tests.judge_fakes:SlowRules", "options": {"delay_s": 1.0, "max_words": 4}},
    learner={"epochs": 30},
)


@pytest.mark.parametrize("kill_at", [(2, "sample"), (2, "judge")], ids=["mid-judge", "mid-learn"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model, kill_at):
    full = write_config(tmp_path, tiny_model, "full", **SLOW)
    finish(alignloop("run", str(full)))

    killed = write_config(tmp_path, tiny_model, "killed", **SLOW)
    proc = alignloop("run", str(killed))
    wait_for(lambda: state_of(tmp_path / "killed") == kill_at, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, with no warning
    proc.wait()

    again = alignloop("run", str(killed))
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and "pass --resume" in out, "a run directory with progress must not be clobbered"

    out = finish(alignloop("run", str(killed), "--resume"))
    assert f"iter {kill_at[0]}/3" in out and "iter 1/3" not in out, "the resumed run redid a finished iteration"
    a, b = artifacts(tmp_path / "full"), artifacts(tmp_path / "killed")
    assert a["state"]["iteration"] == b["state"]["iteration"] == 3
    assert a["state"]["adapter_checksum"] == b["state"]["adapter_checksum"]
    assert a["iters"].keys() == b["iters"].keys()
    for name in a["iters"]:
        for key in a["iters"][name]:
            assert a["iters"][name][key] == b["iters"][name][key], f"{name}/{key} differs after resume"


AHEAD = dict(SLOW, asynchronous={"max_staleness": 1})


def progress(run_dir: Path) -> tuple[int, tuple[int, ...]] | None:
    """(the learner's last iteration, the iterations sampled or judged ahead of it)."""
    try:
        s = json.loads((run_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return s["iteration"], tuple(sorted(int(j) for j in s["data"].get("ahead", {})))


def test_sampling_ahead_stays_within_its_bound_and_resumes_after_sigkill_as_if_never_killed(tmp_path, tiny_model):
    full = write_config(tmp_path, tiny_model, "full", **AHEAD)
    proc = alignloop("run", str(full))
    seen = set()
    while proc.poll() is None:
        seen.add(progress(tmp_path / "full"))
        time.sleep(0.01)
    finish(proc)
    seen.discard(None)
    assert all(max(ahead, default=0) <= learned + 2 for learned, ahead in seen), seen  # at most 1 version behind
    assert any(learned + 2 in ahead for learned, ahead in seen), f"it never sampled ahead of the learner: {seen}"

    killed = write_config(tmp_path, tiny_model, "killed", **AHEAD)
    proc = alignloop("run", str(killed))
    wait_for(lambda: (p := progress(tmp_path / "killed")) is not None and p[0] == 0 and 2 in p[1], proc)
    os.killpg(proc.pid, signal.SIGKILL)  # iteration 2 sampled, iteration 1 still learning
    proc.wait()
    out = finish(alignloop("run", str(killed), "--resume"))
    assert "iter 1/3" in out
    assert_same(artifacts(tmp_path / "full"), artifacts(tmp_path / "killed"))
    assert [
        json.loads(line)["policy_lag"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ] == [
        0,
        1,
        1,
    ]


def test_resume_with_a_different_config_is_refused(tmp_path, tiny_model):
    path = write_config(tmp_path, tiny_model, "r1", iterations=1)
    finish(alignloop("run", str(path)))
    changed = yaml.safe_load(path.read_text())
    changed["seed"] = 1
    path.write_text(yaml.safe_dump(changed))
    out, _ = (p := alignloop("run", str(path), "--resume")).communicate(timeout=120)
    assert p.returncode == 2 and "different config (fields: seed)" in out


def test_two_runs_started_together_on_one_run_directory_one_writes_the_other_exits_6(tmp_path, tiny_model):
    """Seed 0 and seed 1 started at the same moment on one run directory, then --overwrite
    while the winner runs: one writer only, and the directory is wholly the winner's."""
    paths = {}
    for seed in (0, 1):
        cfg = tiny_config(tiny_model, write_prompts(tmp_path / "prompts.jsonl", n=6), tmp_path / "run", seed=seed)
        paths[seed] = tmp_path / f"seed{seed}.yaml"
        paths[seed].write_text(yaml.safe_dump(cfg))
    procs = {seed: alignloop("run", str(paths[seed])) for seed in (0, 1)}
    lost = None
    while lost is None:  # the loser exits at once, before Ray starts
        lost = next((seed for seed, p in procs.items() if p.poll() is not None and p.returncode != 0), None)
        if all(p.poll() is not None for p in procs.values()):
            break
        time.sleep(0.05)
    assert lost is not None, {s: p.communicate()[0][-2000:] for s, p in procs.items()}
    won = 1 - lost
    out = procs[lost].communicate()[0]
    assert procs[lost].returncode == 6 and "in use by another alignloop process" in out, out
    overwrite = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "run", str(paths[lost]), "--overwrite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if procs[won].poll() is None:  # still running: the overwrite must not have touched it
        assert overwrite.returncode == 6, overwrite.stdout + overwrite.stderr
    finish(procs[won])
    run_dir = tmp_path / "run"
    if overwrite.returncode == 0:  # the winner had finished: --overwrite then rightly replaced its run
        won = lost
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == won
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2]
    again = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "run", str(paths[won]), "--resume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr  # the directory verifies as one whole run


def test_ray_processes_left_by_a_driver_killed_alone_are_removed_by_the_next_start(tmp_path, tiny_model):
    """SIGKILL to the driver only (as the OOM killer does): the raylet goes with it, its agents
    stay behind, reparented to init. The resumed run removes them before starting Ray."""
    import psutil

    from alignloop.loop import orphans

    path = write_config(tmp_path, tiny_model, "run", **SLOW)
    before = {p.pid for p in orphans.orphans()}
    proc = alignloop("run", str(path))
    try:
        wait_for(lambda: state_of(tmp_path / "run") == (1, "sample"), proc)
        proc.kill()
        proc.wait()
        deadline = time.time() + 60
        while not (left := [p for p in orphans.orphans() if p.pid not in before]) and time.time() < deadline:
            time.sleep(0.2)
        assert left, "nothing outlived the killed driver: the test no longer shows what it fixes"
        out = finish(alignloop("run", str(path), "--resume"))
        assert "Ray process(es) a killed run had left behind" in out, out
        assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
