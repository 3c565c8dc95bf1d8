"""The layering the code relies on: records at the bottom, judges and policies above them,
loop (orchestration) on top; Ray only in loop/actors.py (and the modules that start it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> dict[str, set[str]]:
    """module path -> top-level names of every module it imports (at any depth of the file)."""
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = {n.removeprefix("alignloop.") for n in names}
    return out


def test_everything_imports_through_the_alignloop_namespace():
    """The folders install as alignloop.loop, alignloop.judges, ...: a bare `import records`
    would pick up PyPI's package of that name, or fail in an installed wheel."""
    for package in ("records", "judges", "policies", "loop"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                bare = [n for n in names if n.split(".")[0] in ("records", "judges", "policies", "loop")]
                assert not bare, f"{path.relative_to(ROOT)} imports {bare}; import them as alignloop.<name>"


def test_imports_flow_one_way():
    for package, forbidden in [("records", ("loop", "judges", "policies")), ("judges", ("loop",)), ("policies", ("loop",))]:
        for module, names in imports(package).items():
            bad = sorted(n for n in names if n.split(".")[0] in forbidden)
            assert not bad, f"{module} imports {bad}: {package} must not depend on {forbidden}"


def test_ray_stays_at_the_edges():
    allowed = {"loop/actors.py"}
    for module, names in imports("loop").items():
        if module not in allowed:
            assert not any(n.split(".")[0] == "ray" for n in names), f"{module} imports ray; Ray calls belong in loop/actors.py"


def test_offline_training_and_rounds_bookkeeping_do_not_import_ray():
    code = "import sys, alignloop.loop.offline, alignloop.loop.series, alignloop.loop.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
