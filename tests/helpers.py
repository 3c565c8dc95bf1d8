"""What the tests share: starting `alignloop` as users do, waiting for a run to reach a step,
comparing what two runs produced, and the guard that keeps tests/unit pure."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import tiny_config, write_prompts

ROOT = Path(__file__).resolve().parents[1]


def write_instructions(path: Path, *instructions: str, ids: list[str] | None = None) -> Path:
    """A prompt file with one {"instruction": ...} row per text (and the given ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": t, **({"id": ids[i]} if ids else {})} for i, t in enumerate(instructions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
    return subprocess.Popen(
        [sys.executable, "-m", "alignloop.loop.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
        **kw,
    )


# A launcher for the CLI with some packages hidden from importlib.util.find_spec (argv[1],
# comma-separated), as if they were not installed: the checks for a missing package then run
# in every environment, including one where the package is there.
HIDE_AND_RUN = """import importlib.util, runpy, sys
hidden, real = set(sys.argv.pop(1).split(",")), importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name in hidden else real(name, *a, **k)
runpy.run_module("alignloop.loop.cli", run_name="__main__", alter_sys=True)
"""


def run_cli(*args, env=None, hide: tuple[str, ...] = (), timeout=120) -> subprocess.CompletedProcess:
    """`alignloop ARGS` to the end, as a user runs it; `hide` names packages to pretend missing."""
    launcher = ["-c", HIDE_AND_RUN, ",".join(hide)] if hide else ["-m", "alignloop.loop.cli"]
    return subprocess.run(
        [sys.executable, *launcher, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def refused(out: subprocess.CompletedProcess, *expected: str) -> None:
    """A config or input error: exit 2, each expected text in the message, no traceback."""
    assert out.returncode == 2, out.stderr
    for text in expected:
        assert text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def openai_judge(**over) -> dict:
    """An OpenAI-compatible judge's config pointing at a port nothing listens on."""
    return {"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", **over}


def judge_config(raw: dict):
    from alignloop.loop.config import validate_config

    return validate_config({"name": "t", "data": {"path": "p.jsonl"}, "judge": raw}).judge


def judge_all(judge, texts):
    """(samples, judgments) of `judge` on one sample per text, each with its own prompt."""
    import asyncio

    from tests.judge_fakes import prompts_and_samples

    prompts, samples = prompts_and_samples(texts)
    by_id = {p.id: p for p in prompts}
    return samples, asyncio.run(judge.judge([by_id[s.prompt_id] for s in samples], samples))


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
            "judgments": [
                {k: v for k, v in json.loads(line).items() if k != "latency_s"}
                for line in (d / "judgments.jsonl").read_text().splitlines()
            ],
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
    assert a["iters"], "no iteration was written: nothing to compare"
    assert a["state"]["adapter_checksum"] == b["state"]["adapter_checksum"]
    assert a["iters"].keys() == b["iters"].keys()
    for name in a["iters"]:
        for key in a["iters"][name]:
            assert a["iters"][name][key] == b["iters"][name][key], f"{name}/{key} differs"


def run_in_process(cfg) -> list[dict]:
    """The real run in this process (LocalRoles, no Ray), as a run would drive it."""
    from alignloop.loop.data import load_prompts
    from alignloop.loop.roles.local import LocalRoles
    from alignloop.loop.run import iterate
    from alignloop.loop.steps import Steps
    from alignloop.loop.store import prepare_run_dir
    from alignloop.loop.tracking import Tracking

    store = prepare_run_dir(cfg, resume=True, overwrite=False)
    roles, tracking = LocalRoles(cfg), Tracking(cfg, store)
    try:
        steps = Steps(cfg, store, roles, load_prompts(cfg.data.path), tracking)
        iterate(steps, steps.restore())
        return store.read_metrics()
    finally:
        tracking.close()
        roles.shutdown()


# The fast tier's guard (wired up in tests/unit/conftest.py) -------------------------------

MOVE_IT = (
    "tests/unit stays pure (no subprocess, no Ray, no embedded model; `make test-fast`); "
    "move this test to tests/integration, whose modules carry pytestmark = pytest.mark.integration"
)


class ImpureUnitTest(Exception):
    """A test in tests/unit did something that belongs in tests/integration."""


@contextlib.contextmanager
def purity_guard():
    """While active, starting a subprocess, starting Ray and resolving the embedded model raise
    ImpureUnitTest. Each attempt is also appended to the yielded list, so that a test whose code
    catches the exception (a CLI turning errors into exit codes) still fails."""
    import ray

    from alignloop.policies import model

    seen: list[str] = []

    def refuse(what: str, arg_index: int):
        def refused(*args, **kwargs):
            detail = repr(args[arg_index])[:200] if len(args) > arg_index else ""
            seen.append(f"this test {what} {detail}: {MOVE_IT}")
            raise ImpureUnitTest(seen[-1])

        return refused

    # Popen.__init__ rather than the name subprocess.Popen: it also catches subprocess.run,
    # asyncio's subprocesses and code that did `from subprocess import Popen` long ago.
    # (A refused Popen is never created: its class attribute _child_created keeps __del__ quiet.)
    targets = [
        (subprocess.Popen, "__init__", "starts a subprocess", 1),
        (ray, "init", "starts Ray (ray.init)", 99),
        (model, "ensure_embedded", "loads the embedded model", 0),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _, _ in targets]
    try:
        for owner, name, what, arg_index in targets:
            setattr(owner, name, refuse(what, arg_index))
        yield seen
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def load_script(name: str):
    """scripts/<name>.py as a module, with scripts/ on the path for the modules it imports from
    its own folder (side_by_side, repro_cut)."""
    import importlib.util
    import sys

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))
    spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
