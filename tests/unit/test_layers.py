"""The layering the code relies on: records at the bottom, judges and policies above them,
loop (orchestration) on top; Ray only in loop/roles/ray_runtime.py and ray_roles.py (and the modules that start it). That
the CLI's offline paths do not import Ray, in a fresh interpreter, is checked in
tests/integration/test_layers.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sources(package: str) -> list[Path]:
    """The package's .py files; none found means the walk looks in the wrong place, and every
    check over them would pass on nothing."""
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, f"no Python files under {ROOT / package}"
    return found


def imports(package: str) -> dict[str, set[str]]:
    """module path -> top-level names of every module it imports (at any depth of the file)."""
    out = {}
    for path in sources(package):
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
        for path in sources(package):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module]
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                    else []
                )
                bare = [n for n in names if n.split(".")[0] in ("records", "judges", "policies", "loop")]
                assert not bare, f"{path.relative_to(ROOT)} imports {bare}; import them as alignloop.<name>"


def test_imports_flow_one_way():
    for package, forbidden in [
        ("records", ("loop", "judges", "policies")),
        ("judges", ("loop",)),
        ("policies", ("loop",)),
    ]:
        for module, names in imports(package).items():
            bad = sorted(n for n in names if n.split(".")[0] in forbidden)
            assert not bad, f"{module} imports {bad}: {package} must not depend on {forbidden}"


def test_ray_stays_at_the_edges():
    allowed = {"loop/roles/ray_runtime.py", "loop/roles/ray_roles.py"}
    modules = imports("loop")
    assert allowed <= modules.keys(), f"{sorted(allowed - modules.keys())} no longer exist: update `allowed`"
    for module, names in modules.items():
        if module not in allowed:
            assert not any(n.split(".")[0] == "ray" for n in names), (
                f"{module} imports ray; Ray calls belong in loop/roles/ray_*.py"
            )
