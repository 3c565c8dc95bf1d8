"""scripts/reproduce.py end to end at smoke sizes (a few bandit steps, a 4-step pretraining,
one round): proves the plumbing — alignloop's objectives driving the bandit, the tiny model
through Learner and HFSampler, the tables and one PASS/FAIL line per check. The thresholds
are not asserted: at these sizes the findings cannot appear (the full run checks them)."""

from __future__ import annotations

import re

from tests.helpers import load_script


def load():
    return load_script("reproduce")


def test_smoke_run_prints_tables_and_a_line_per_check(capsys):
    rc = load().main(["--smoke", "--seeds", "0"])
    out = capsys.readouterr().out
    assert rc in (0, 1)  # 1 when a check fails, which the smoke sizes allow
    assert "### Bandit" in out and "### CUT, hard regime" in out and "medium regime" in out and "easy regime" in out
    for method in ("CUT", "CUT with judged spans", "filtered SFT", "Hindsight", "CUT without token detection"):
        assert f"| {method} |" in out
    checks = re.findall(r"^\| (PASS|FAIL) \| .+ \| -?\d+\.\d{3} \| (?:>=|<=|>) -?[\d.]+ \|$", out, re.MULTILINE)
    assert len(checks) == 14 + 16  # bandit + CUT (hard regime 10, medium 6)
    assert ("ALL CHECKS PASS" in out) == (rc == 0)
    assert re.search(r"wall time: \d+ s", out)


def test_bf16_runs_the_cut_suite_in_bfloat16(capsys, monkeypatch):
    """--precision bf16 reaches the Learner (autocast) and the sampler (bfloat16 weights)."""
    module = load()  # puts scripts/ on the path: main() imports this same repro_cut
    import repro_cut

    seen = []
    real = repro_cut.configs
    monkeypatch.setattr(repro_cut, "configs", lambda *a: seen.append(real(*a)) or seen[-1])
    rc = module.main(["--smoke", "--seeds", "0", "--only", "cut", "--precision", "bf16"])
    out = capsys.readouterr().out
    assert rc in (0, 1) and "precision bf16." in out
    assert seen and all(lc.precision == "bf16" and sc.dtype == "bfloat16" for _, lc, sc in seen)


def test_checks_compare_measured_values_with_thresholds():
    lines, failed = load().check_lines([("a", 0.96, ">=", 0.95), ("b", 0.51, "<=", 0.5), ("c", 0.0, ">", 0.0)])
    assert failed == 2
    assert lines[2:] == [
        "| PASS | a | 0.960 | >= 0.95 |",
        "| FAIL | b | 0.510 | <= 0.5 |",
        "| FAIL | c | 0.000 | > 0 |",
    ]


def test_bad_seeds_are_refused_before_anything_runs(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        load().main(["--seeds", "zero"])
    assert e.value.code == 2 and "comma-separated integers" in capsys.readouterr().err


def test_readme_block_is_the_report(tmp_path, capsys):
    """--readme replaces exactly the marked block; a README without one is refused."""
    import pytest

    module = load()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- reproduce:begin -->\nold tables\n<!-- reproduce:end -->\nafter\n")
    with pytest.raises(SystemExit) as e:
        module.main(["--smoke", "--readme", str(readme)])
    assert e.value.code == 2 and "drop --smoke" in capsys.readouterr().err
    (tmp_path / "other.md").write_text("no block\n")
    with pytest.raises(SystemExit):
        module.main(["--readme", str(tmp_path / "other.md")])
    assert "reproduce:begin" in capsys.readouterr().err
    printed = []
    module.report("demo", "### Demo", [("a", 1.0, ">=", 0.5)], printed)
    module.write_readme(readme, printed[0] + "\n")
    assert readme.read_text() == (
        "intro\n<!-- reproduce:begin -->\n### Demo\n\n#### Checks: demo\n\n"
        "| result | check | measured | threshold |\n|---|---|---|---|\n"
        "| PASS | a | 1.000 | >= 0.5 |\n<!-- reproduce:end -->\nafter\n"
    )
