"""Type-check the whole `alignloop` namespace with mypy; exits with mypy's exit code.

    .venv/bin/python scripts/typecheck.py        # or: make typecheck

The folders loop/, judges/, policies/ and records/ install as alignloop.loop etc. through
setuptools' package-dir mapping, which mypy cannot follow. So this builds the layout mypy
expects in a temporary directory (copies of alignloop/*.py, symlinks to the four package
folders) and runs `mypy -p alignloop` there with the config in pyproject.toml. The cache
stays in the repo's .mypy_cache, so a second run only re-checks what changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("loop", "judges", "policies", "records")


def build_tree(root: Path) -> None:
    """Lay out `root/alignloop/` as the installed package: top-level files and the four folders."""
    pkg = root / "alignloop"
    pkg.mkdir()
    for src in sorted((REPO / "alignloop").glob("*.py")):
        shutil.copy2(src, pkg / src.name)  # copy2 keeps the mtime, so the cache stays valid
    for name in PACKAGES:
        (pkg / name).symlink_to(REPO / name, target_is_directory=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="alignloop-typecheck-") as tmp:
        root = Path(tmp)
        build_tree(root)
        cmd = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(REPO / ".mypy_cache"),
            "-p",
            "alignloop",
        ]
        # The subprocess writes straight to this process's stdout and stderr.
        return subprocess.run(cmd, cwd=root).returncode


if __name__ == "__main__":
    sys.exit(main())
