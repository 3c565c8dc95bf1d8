"""The two tiers hold: the guard of tests/unit refuses what makes a test impure (even when the
code under test catches the refusal), and every module of tests/integration carries the
`integration` marker that `make test-fast` leaves out."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ImpureUnitTest, purity_guard

TESTS = Path(__file__).resolve().parents[1]


def test_the_guard_refuses_a_subprocess_ray_and_the_embedded_model():
    import ray

    from alignloop.policies.model import resolve_model_path

    # A guard of its own inside the one this test runs under: what it records stays here.
    before = subprocess.Popen.__dict__["__init__"]
    with purity_guard() as seen:
        with pytest.raises(
            ImpureUnitTest, match=r"starts a subprocess \['true'\].*move this test to tests/integration"
        ):
            subprocess.run(["true"])
        with pytest.raises(ImpureUnitTest, match="starts a subprocess"):
            asyncio.run(asyncio.create_subprocess_exec("true"))
        with pytest.raises(ImpureUnitTest, match=r"starts Ray \(ray.init\)"):
            ray.init(num_cpus=1)
        with pytest.raises(ImpureUnitTest, match="loads the embedded model 'smollm2-135m-instruct'"):
            resolve_model_path("smollm2-135m-instruct")
        try:  # as a CLI would: the refusal becomes an exit code, and the guard still knows
            subprocess.check_output([sys.executable, "-c", "pass"])
        except Exception:
            pass
    assert len(seen) == 5 and all("move this test to tests/integration" in s for s in seen)
    assert not ray.is_initialized()
    assert subprocess.Popen.__dict__["__init__"] is before, "leaving the guard puts back what was there"


def test_every_integration_module_carries_the_marker():
    modules = sorted((TESTS / "integration").glob("test_*.py"))
    assert len(modules) >= 6, "tests/integration was not found"
    unmarked = []
    for path in modules:
        marks = [
            ast.unparse(node.value)
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets)
        ]
        if not any("pytest.mark.integration" in m for m in marks):
            unmarked.append(path.name)
    assert not unmarked, f"{unmarked}: put `pytestmark = pytest.mark.integration` in each tests/integration module"


def test_no_unit_module_marks_its_own_tests_integration():
    """An integration test belongs in tests/integration; a marker here would only hide it from
    the fast tier (and from the guard). The files still to move are listed in conftest.py."""
    modules = sorted((TESTS / "unit").glob("test_*.py"))
    assert len(modules) >= 10, "tests/unit was not found"
    marked = [p.name for p in modules if p.name != Path(__file__).name and "mark.integration" in p.read_text()]
    assert not marked, f"{marked}: move these tests to tests/integration instead of marking them here"
