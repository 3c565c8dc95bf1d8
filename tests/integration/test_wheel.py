"""The wheel as a user installs it: built from a copy of this tree, installed into a clean venv
(no system site-packages, no editable install) beside PyPI's `records` and `judges`, the two
packages whose names alignloop's folders carry. Every import must resolve to the right files:
alignloop's modules to the venv's alignloop/, `records` and `judges` to PyPI's. torch is left
out (a multi-GB build): the imports checked here and `alignloop --help` must not need it.
Needs PyPI (or the machine's configured index) for records, judges, pydantic and PyYAML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration

# What the build needs is the tree itself; these are outputs, caches and other venvs. A build in
# place would leave build/ behind, whose stale copies of deleted modules a later wheel would ship.
NOT_SOURCES = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "mlruns", "tmp")

CHECK = """
import importlib.metadata, importlib.util, json, sys, sysconfig
import records, judges
import alignloop, alignloop.records, alignloop.judges, alignloop.loop.cli, alignloop.policies.objectives
mods = (records, judges, alignloop, alignloop.records, alignloop.judges, alignloop.loop.cli, alignloop.policies.objectives)
print(json.dumps({
    "site": sysconfig.get_paths()["purelib"],
    "files": {m.__name__: m.__file__ for m in mods},
    "dists": {name: [str(f) for f in importlib.metadata.distribution(name).files] for name in ("records", "judges")},
    "pypi_api": [hasattr(records, "Database"), hasattr(judges, "Jury")],
    "torch": importlib.util.find_spec("torch") is not None,
}))
"""


def run(*cmd, cwd: Path, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    # --no-build-isolation: setuptools from this venv, so the build itself needs no network
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp / "dist",
        src,
        cwd=tmp,
    )
    (built,) = (tmp / "dist").glob("alignloop-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"alignloop", wheel.name.split("-py")[0] + ".dist-info"}, sorted(tops)
    # Every package of the source folders made it in (a subpackage missing from pyproject's
    # `packages` list would be left out of the wheel while the editable install still finds it).
    for folder, package in (("loop", "loop"), ("records", "records"), ("judges", "judges"), ("policies", "policies")):
        for init in (ROOT / folder).rglob("__init__.py"):
            inner = init.relative_to(ROOT / folder).as_posix()
            assert f"alignloop/{package}/{inner}" in names, (
                f"{folder}/{inner} is not in the wheel: add it to pyproject's packages"
            )


def test_a_clean_venv_imports_alignloop_beside_pypis_records_and_judges(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    # PyPI's packages first, then the wheel over them: a wheel that shipped a top-level
    # records/ or judges/ would overwrite or shadow them, and the checks below would see it.
    run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "records",
        "judges",
        "pydantic>=2.8",
        "pyyaml>=6.0",
        "numpy>=1.26",
        "tqdm>=4.66",
        cwd=tmp_path,
    )
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)

    # -I: no PYTHONPATH, no user site, not the current directory; tmp_path is outside the tree
    seen = json.loads(run(python, "-I", "-c", CHECK, cwd=tmp_path))
    site = Path(seen["site"])
    assert site.is_relative_to(venv), site
    files = {name: Path(f) for name, f in seen["files"].items()}
    assert files["records"] == site / "records.py" and "records.py" in seen["dists"]["records"]
    assert files["judges"] == site / "judges" / "__init__.py" and "judges/__init__.py" in seen["dists"]["judges"]
    assert seen["pypi_api"] == [True, True], "records.Database and judges.Jury: PyPI's packages, not alignloop's"
    assert files["alignloop"] == site / "alignloop" / "__init__.py"
    assert files["alignloop.records"] == site / "alignloop" / "records" / "__init__.py"
    assert files["alignloop.judges"] == site / "alignloop" / "judges" / "__init__.py"
    assert files["alignloop.loop.cli"] == site / "alignloop" / "loop" / "cli.py"
    assert files["alignloop.policies.objectives"] == site / "alignloop" / "policies" / "objectives" / "__init__.py"
    assert not seen["torch"], "torch was installed into the clean venv; the checks here must not need it"

    # The console script the wheel declares answers without torch, Ray or the model.
    assert "usage: alignloop" in run(venv / "bin" / "alignloop", "--help", cwd=tmp_path)
