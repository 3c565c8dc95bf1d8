"""`alignloop report`: a real run (in-process, tiny model) rendered to HTML by the CLI in a
subprocess, opened in headless Chromium, which must decode every plot."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignloop.loop.config import validate_config
from tests.conftest import tiny_config, write_prompts
from tests.helpers import run_in_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    raw = tiny_config(
        tiny_model,
        write_prompts(tmp / "p.jsonl"),
        tmp / "run",
        iterations=2,
        judging={"actors": 1},
        sampler={"replicas": 1},
        tracking={"backends": []},
    )
    run_in_process(validate_config(raw))
    return tmp / "run"


def test_report_writes_a_page_and_its_plots(run_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "report", str(run_dir), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    pngs = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert pngs == ["judge.png", "kl.png", "lengths.png", "loss.png", "pass.png", "phases.png"]
    assert all((tmp_path / "r" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6, "the page must stand alone: plots embedded"
    assert "Best responses of iteration 2" in page and "Worst responses of iteration 2" in page
    bad = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "report", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2 and "neither a run directory" in bad.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_report_renders_in_a_real_browser(run_dir, tmp_path):
    from alignloop.loop.report import write_report

    page = write_report(run_dir, tmp_path / "r")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert 'data-plots="6"' in body.group(0) and 'data-plots-rendered="6"' in body.group(0), body.group(0)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000, "a rendered page with plots is not a blank screenshot"
