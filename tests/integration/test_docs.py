"""The documentation site builds in strict mode, and the generated pages match the code.

Strict (mkdocs.yml): a link to a missing page or anchor, or a page left out of `nav`, is an
error. Nothing is fetched: the Material theme and its search plugin build offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's end-of-life banner, not a warning
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=config.parent,
        env=env,
        timeout=300,
        check=False,
    )


def test_docs_build_strict(tmp_path):
    out = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "configuration-reference" / "index.html").exists()
    # the picture a page shows is copied into the site
    assert (tmp_path / "site" / "report.png").exists()


def test_docs_build_fails_on_a_broken_link_and_a_page_missing_from_nav(tmp_path):
    """Strict mode is what makes the build above a check: break a copy of the site both ways."""
    copy = tmp_path / "copy"
    (copy / "docs").mkdir(parents=True)
    for page in (ROOT / "docs").iterdir():
        (copy / "docs" / page.name).write_bytes(page.read_bytes())
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    with open(copy / "docs" / "api.md", "a") as f:
        f.write("\n[a broken anchor](judges.md#no-such-section)\n")
    (copy / "docs" / "orphan.md").write_text("# Not in nav\n")
    out = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    assert out.returncode != 0
    assert "no-such-section" in out.stderr and "orphan.md" in out.stderr, out.stderr


def test_config_reference_matches_the_schema():
    """docs/configuration-reference.md is generated; a schema change without --write fails here."""
    out = subprocess.run(
        [sys.executable, "scripts/config_reference.py", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stderr
