"""What a fresh interpreter imports: offline training, the rounds' bookkeeping and the CLI
itself answer without importing Ray (a subprocess, since this one has Ray loaded already)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration


def test_offline_training_and_rounds_bookkeeping_do_not_import_ray():
    code = "import sys, alignloop.loop.offline, alignloop.loop.series, alignloop.loop.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
