"""A real two-node Ray cluster on this machine (scripts/local_cluster.sh: a head and a worker
raylet, each with its own custom resource and temp dir, token authentication on, every port on
127.0.0.1), and configs/cluster-cpu.yaml on it with the tiny model: a driver attached through
RAY_ADDRESS, and the same run through `ray job submit`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import write_prompts
from tests.fake_openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_cluster.sh"
SECRET = "sk-test-0123456789abcdefghijklmnop"  # what a judge key looks like; must never leak


def free_port_block(size: int = 300) -> int:
    """The first port P (below Linux's ephemeral range, where other processes' random ports
    land) such that P .. P+size-1 are all free on 127.0.0.1: the script's ports for one cluster."""
    import socket

    for base in range(20000 + os.getpid() % 20 * size, 32000 - size, size):
        try:
            for port in range(base, base + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports for the test cluster")


PORT = free_port_block()


def script_env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "ALIGNLOOP_CLUSTER_PORT": str(PORT),
    }


@pytest.fixture(scope="module")
def cluster():
    """Up for the module's tests, down after, by the script users run. The judge key is in the
    nodes' environment (where judge actors run), as on a real cluster."""
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the ray CLI is not installed next to this Python")
    d = Path(tempfile.mkdtemp(prefix="alc-", dir="/tmp"))  # short: Ray's socket paths are limited to 107 bytes
    env = {**script_env(), "ALIGNLOOP_TEST_KEY": SECRET}
    try:
        up = subprocess.run(["bash", str(SCRIPT), "up", str(d)], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        values = dict(line.removeprefix("export ").split("=", 1) for line in (d / "env").read_text().splitlines())
        yield d, {**script_env(), **values}
    finally:
        down = subprocess.run(
            ["bash", str(SCRIPT), "down", str(d)], env=env, capture_output=True, text=True, timeout=60
        )
        assert down.returncode == 0, down.stderr
        shutil.rmtree(d, ignore_errors=True)


def overrides(tiny_model: Path, prompts: Path, run_dir: Path) -> list[str]:
    sets = [
        f"model.path={tiny_model}",
        "model.lora.target_modules=[q_proj, v_proj]",
        f"data.path={prompts}",
        "sampler.max_new_tokens=6",
        "learner.threads=1",
        "sampler.threads=1",
        f"run_dir={run_dir}",
    ]
    return [arg for s in sets for arg in ("--set", s)]


def node_resources(placement: dict, group: str) -> set[str]:
    return {r for nid in placement[group] for r in placement["nodes"][nid]}


def check_run(run_dir: Path) -> dict:
    """The run directory on the driver's node is complete, and the adapter crossed nodes."""
    state = json.loads((run_dir / "state.json").read_text())
    assert (state["iteration"], state["step"], state["adapter_version"]) == (2, "learn", 2)
    assert (run_dir / "iter-0002" / "adapter" / "adapter_model.safetensors").exists()
    second = [json.loads(line) for line in (run_dir / "iter-0002" / "samples.jsonl").read_text().splitlines()]
    # sampled on node_b from the adapter the learner trained on node_a: it came through the
    # object store (the sampler verified its version and checksum before using it)
    assert second and {s["policy_version"] for s in second} == {1}
    (placement,) = [json.loads(line) for line in (run_dir / "placement.jsonl").read_text().splitlines()]
    assert node_resources(placement, "samplers") == {"node_b"}
    assert node_resources(placement, "learner") == node_resources(placement, "judges") == {"node_a"}
    assert set(placement["samplers"]).isdisjoint(placement["learner"])
    return placement


def test_driver_attached_with_ray_address_places_actors_on_the_named_nodes(cluster, tiny_model, tmp_path):
    _, env = cluster
    prompts = write_prompts(tmp_path / "p.jsonl", n=8)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignloop.loop.cli",
            "run",
            "configs/cluster-cpu.yaml",
            *overrides(tiny_model, prompts, tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "placed on 2 node(s)" in out.stdout
    check_run(tmp_path / "run")


def test_job_submit_runs_merges_the_jobs_runtime_env_and_keeps_the_key_out(cluster, tiny_model, tmp_path):
    d, env = cluster
    prompts = write_prompts(tmp_path / "p.jsonl", n=8)
    with FakeOpenAIServer() as server:
        judge = json.dumps(
            {
                "type": "composite",
                "mode": "all",
                "judges": [
                    {
                        "type": "python",
                        "name": "env",
                        "target": "tests.env_judge:EnvJudge",
                        "options": {"names": ["ALIGNLOOP_TEST_JOB_VAR", "TOKENIZERS_PARALLELISM"]},
                    },
                    {
                        "type": "openai",
                        "name": "api",
                        "base_url": server.url,
                        "model": "judge-model",
                        "api_key_env": "ALIGNLOOP_TEST_KEY",
                        "cache": False,
                    },
                ],
            }
        )
        runtime_env = {
            "excludes": ["runs/", ".venv/", ".venv-vllm/", ".git/"],
            "env_vars": {"ALIGNLOOP_TEST_JOB_VAR": "kept"},
        }
        out = subprocess.run(
            [
                "ray",
                "job",
                "submit",
                "--address",
                env["RAY_JOB_ADDRESS"],
                "--working-dir",
                str(ROOT),
                "--runtime-env-json",
                json.dumps(runtime_env),
                "--",
                "python",
                "-m",
                "alignloop.loop.cli",
                "run",
                "configs/cluster-cpu.yaml",
                "--set",
                f"judge={judge}",
                *overrides(tiny_model, prompts, tmp_path / "run"),
            ],
            cwd=ROOT,
            env={**env, "ALIGNLOOP_TEST_KEY": SECRET},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert server.requests > 0 and f"Bearer {SECRET}" in server.auth  # the judge used the nodes' key
    placement = check_run(tmp_path / "run")
    critiques = [
        json.loads(line)["critique"]
        for line in (tmp_path / "run" / "iter-0001" / "judgments.jsonl").read_text().splitlines()
    ]
    # the job's own variable and alignloop's actor variable, both in the judge actor
    assert all("ALIGNLOOP_TEST_JOB_VAR=kept" in c and "TOKENIZERS_PARALLELISM=false" in c for c in critiques)
    assert all(f"node_id={placement['judges'][0]}" in c for c in critiques)
    # the key is in no job metadata and no Ray log of either node
    jobs = subprocess.run(
        ["ray", "job", "list", "--address", env["RAY_JOB_ADDRESS"]], env=env, capture_output=True, text=True, timeout=60
    )
    assert jobs.returncode == 0 and "ALIGNLOOP_TEST_JOB_VAR" in jobs.stdout and SECRET not in jobs.stdout
    leaked = [p for p in d.rglob("*") if p.is_file() and "logs" in p.parts and SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the judge key appears in {leaked[:3]}"


def test_a_stopped_job_resubmitted_with_resume_completes(cluster, tiny_model, tmp_path):
    """`ray job stop` in the middle of a run (the job's driver goes, its actors with it), then
    the same job submitted again with --resume: the run ends as an uninterrupted one."""
    from tests.helpers import artifacts, assert_same, state_of, wait_for

    _, env = cluster
    prompts = write_prompts(tmp_path / "p.jsonl", n=8)
    # Four iterations and a stop inside the first: the stop cannot come after the job ended,
    # however slow `ray job stop` is to arrive (with two, a fast machine finished first).
    sets = overrides(tiny_model, prompts, tmp_path / "run") + [
        "--set",
        "sampler.max_new_tokens=48",
        "--set",
        "sampler.batch_size=1",
        "--set",
        "iterations=4",
    ]
    ref = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignloop.loop.cli",
            "run",
            "configs/cluster-cpu.yaml",
            *sets,
            "--set",
            f"run_dir={tmp_path / 'ref'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]

    def submit(*extra: str) -> list[str]:
        return [
            "ray",
            "job",
            "submit",
            "--address",
            env["RAY_JOB_ADDRESS"],
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            json.dumps({"excludes": ["runs/", ".venv/", ".venv-vllm/", ".git/"]}),
            *extra,
            "--",
            "python",
            "-m",
            "alignloop.loop.cli",
            "run",
            "configs/cluster-cpu.yaml",
            *sets,
        ]

    job_id = f"alignloop-test-{os.getpid()}"
    started = subprocess.run(
        submit("--no-wait", "--submission-id", job_id), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stdout + started.stderr
    waiter = subprocess.Popen(["sleep", "600"])
    try:
        wait_for(lambda: state_of(tmp_path / "run") in [(1, "sample"), (1, "judge"), (1, "learn")], waiter)
    finally:
        waiter.kill()
    stop = subprocess.run(
        ["ray", "job", "stop", "--address", env["RAY_JOB_ADDRESS"], job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    stopped_at = state_of(tmp_path / "run")
    assert stopped_at is not None and stopped_at[0] < 4, f"the job was not stopped mid-run (state {stopped_at})"
    resumed = subprocess.run(submit() + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    redone = [i for i in range(1, 5) if f"iter {i}/4" in resumed.stdout]
    assert redone and redone[-1] == 4 and redone[0] > stopped_at[0] - (stopped_at[1] != "learn"), (
        f"stopped at {stopped_at}, the resumed job ran iterations {redone}"
    )
    assert_same(artifacts(tmp_path / "ref"), artifacts(tmp_path / "run"))


def test_a_worker_node_removed_mid_run_stops_cleanly_and_resume_on_the_rest_completes(cluster, tiny_model, tmp_path):
    """Last in this module: it takes the worker node away. Its sampler cannot be restarted
    anywhere (no other node offers node_b), so the run stops with exit 7 and a message that
    says what to do; resumed with the sampler placed on the head node, it ends with exactly
    the artifacts of an uninterrupted run."""
    import psutil

    from tests.helpers import artifacts, assert_same, state_of, wait_for

    d, env = cluster
    prompts = write_prompts(tmp_path / "p.jsonl", n=8)
    sets = overrides(tiny_model, prompts, tmp_path / "run") + [
        "--set",
        "sampler.max_new_tokens=48",
        "--set",
        "sampler.batch_size=1",
        "--set",
        "iterations=3",
        "--set",
        "ray.actor_restart_timeout_s=20",
    ]
    args = [sys.executable, "-m", "alignloop.loop.cli", "run", "configs/cluster-cpu.yaml"]
    on_head = ["--set", "sampler.resources={node_a: 0.1}", "--set", "sampler.num_cpus=0"]
    ref = subprocess.run(
        [*args, *sets, "--set", f"run_dir={tmp_path / 'ref'}", *on_head],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]

    proc = subprocess.Popen(
        [*args, *sets], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # Iteration 3 at least is still to be sampled on the node.
    wait_for(lambda: state_of(tmp_path / "run") in [(1, "learn"), (2, "sample"), (2, "judge")], proc)
    (raylet,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"]
        and p.info["cmdline"][0].endswith("raylet")
        and any(a.startswith(f"--raylet_socket_name={d}/worker/") for a in p.info["cmdline"])
    ]
    # The worker node leaves the cluster without a word, its processes with it (a worker
    # outliving its raylet by a moment could otherwise finish the run's last chunks).
    for p in [raylet, *raylet.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 7, out[-3000:]
    # Which message depends on the call the node took with it: a chunk being sampled ("every
    # sampler actor has died") or an adapter being loaded ("a sampler actor died or stopped answering").
    (stopped,) = [line for line in out.splitlines() if line.startswith("alignloop: stopped: ")]
    assert "every sampler actor has died" in stopped or "a sampler actor died or stopped answering" in stopped, out[
        -3000:
    ]
    assert "--resume" in stopped and "Traceback" not in out, out[-3000:]

    resumed = subprocess.run(
        [*args, *sets, *on_head, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    first, second = [json.loads(line) for line in (tmp_path / "run" / "placement.jsonl").read_text().splitlines()]
    assert node_resources(first, "samplers") == {"node_b"} and node_resources(second, "samplers") == {"node_a"}
    assert_same(artifacts(tmp_path / "ref"), artifacts(tmp_path / "run"))
