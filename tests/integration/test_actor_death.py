"""Actors killed with SIGKILL in the middle of their work, on a real local Ray instance:
a sampler mid-chunk is restarted, gets the adapter again and its chunk is sampled again, and
the run ends exactly as an uninterrupted one; the learner mid-training stops the run with a
message (exit 7) that names it, and --resume then ends exactly as an uninterrupted run."""

from __future__ import annotations

import signal

import psutil
import pytest

from tests.helpers import alignloop, artifacts, assert_same, finish, state_of, wait_for, write_config

pytestmark = pytest.mark.integration

# Sampling in chunks of one prompt with long responses, and 30 epochs of learning on each
# prompt's best response (so there is always something to train on), so that a sampler is
# inside generate() and the learner inside a training step for long enough to be caught there.
SETTINGS = dict(
    iterations=3,
    sampler={"samples_per_prompt": 3, "max_new_tokens": 64, "batch_size": 1, "num_cpus": 0.5, "threads": 1},
    learner={
        "objective": {"type": "sft", "best_of_n": True},
        "epochs": 30,
        "lr": 5e-3,
        "minibatch_size": 4,
        "micro_batch_size": 2,
        "num_cpus": 0.5,
        "threads": 1,
    },
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("reference")
    finish(alignloop("run", str(write_config(d, tiny_model, "full", **SETTINGS))))
    return artifacts(d / "full")


def busy_actor(driver_pid: int, title: str):
    """A process of this run (a descendant of its driver) whose title says it is running
    `title`, e.g. "ray::HFSampler.generate"."""
    try:
        for p in psutil.Process(driver_pid).children(recursive=True):
            try:
                if " ".join(p.cmdline()).startswith(title):
                    return p
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return None


def kill_when(proc, run_dir, states, title):
    """SIGKILL the first actor process running `title` while the run's state is one of
    `states`; returns the state it was killed in."""
    target = []

    def ready() -> bool:
        state = state_of(run_dir)
        if state not in states:
            return False
        target.append((busy_actor(proc.pid, title), state))
        return target[-1][0] is not None

    wait_for(ready, proc)
    process, state = target[-1]
    process.send_signal(signal.SIGKILL)
    return state


def test_a_sampler_killed_mid_chunk_is_restarted_and_its_chunk_sampled_again(tmp_path, tiny_model, reference):
    proc = alignloop("run", str(write_config(tmp_path, tiny_model, "killed", **SETTINGS)))
    # after an update, so the restarted sampler must get that adapter back before sampling again
    state = kill_when(proc, tmp_path / "killed", [(1, "learn"), (2, "learn")], "ray::HFSampler.generate")
    out = finish(proc)
    assert "sampler 0 died" in out and f"serving adapter v{state[0]} again, retrying its chunk" in out
    assert_same(reference, artifacts(tmp_path / "killed"))


def test_the_learner_killed_mid_training_stops_the_run_cleanly_and_resume_completes(tmp_path, tiny_model, reference):
    config = write_config(tmp_path, tiny_model, "killed", **SETTINGS)
    proc = alignloop("run", str(config))
    state = kill_when(proc, tmp_path / "killed", [(2, "judge"), (3, "judge")], "ray::Learner.learn")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 7, out
    assert "the learner actor died during learn()" in out and "--resume" in out and "Traceback" not in out
    assert state_of(tmp_path / "killed") == state, "everything finished before the kill is kept"
    finish(alignloop("run", str(config), "--resume"))
    assert_same(reference, artifacts(tmp_path / "killed"))
