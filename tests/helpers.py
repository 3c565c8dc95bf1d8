"""What the tests that run the real loop share: starting `alignloop` as users do, waiting
for a run to reach a step, and comparing what two runs produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import tiny_config, write_prompts

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, tiny_model: Path, name: str, **over) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts, n=6)
    cfg = tiny_config(tiny_model, prompts, tmp_path / name, **over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def alignloop(*args, **kw) -> subprocess.Popen:
    # PYTHONPATH: the Ray workers (which inherit this environment) import the tests' plugin judge.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "alignloop.loop.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env, **kw)


def finish(proc: subprocess.Popen, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def artifacts(run_dir: Path) -> dict:
    """Everything a run produced that must not depend on interruptions (timings excluded)."""
    out = {}
    for d in sorted(run_dir.glob("iter-*")):
        out[d.name] = {
            "prompts": (d / "prompts.jsonl").read_text(),
            "samples": (d / "samples.jsonl").read_text(),
            "judgments": [{k: v for k, v in json.loads(l).items() if k != "latency_s"}
                          for l in (d / "judgments.jsonl").read_text().splitlines()],
            "adapter": (d / "adapter" / "adapter_model.safetensors").read_bytes(),
            "metrics": {k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if not k.endswith("_s")},
        }
    state = json.loads((run_dir / "state.json").read_text())
    return {"iters": out, "state": state}


def wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point:\n{proc.stdout.read()}")
        if time.time() - start > timeout:
            raise AssertionError("kill point never reached")
        time.sleep(0.01)


def state_of(run_dir: Path):
    try:
        s = json.loads((run_dir / "state.json").read_text())
        return s["iteration"], s["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def assert_same(a: dict, b: dict) -> None:
    assert a["state"]["adapter_checksum"] == b["state"]["adapter_checksum"]
    assert a["iters"].keys() == b["iters"].keys()
    for name in a["iters"]:
        for key in a["iters"][name]:
            assert a["iters"][name][key] == b["iters"][name][key], f"{name}/{key} differs"



def run_in_process(cfg) -> list[dict]:
    """The real cycle in this process (LocalActors, no Ray), as a run would drive it."""
    from alignloop.loop.actors import LocalActors
    from alignloop.loop.cycle import Cycle
    from alignloop.loop.data import load_prompts
    from alignloop.loop.store import prepare_run_dir
    from alignloop.loop.tracking import Tracking

    store = prepare_run_dir(cfg, resume=True, overwrite=False)
    actors, tracking = LocalActors(cfg), Tracking(cfg, store)
    try:
        return Cycle(cfg, store, actors, load_prompts(cfg.data.path), tracking).run()
    finally:
        tracking.close()
        actors.shutdown()
