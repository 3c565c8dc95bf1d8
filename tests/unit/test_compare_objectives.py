"""scripts/compare_objectives.py's bookkeeping: the table of means and spreads over seeds, and
the run directories named by the overrides (the runs themselves are the loop's own)."""

from __future__ import annotations

import math

from tests.helpers import load_script


def load():
    return load_script("compare_objectives")


def test_summary_gives_mean_and_sample_deviation_per_objective():
    c = load()
    final = {
        "sft": {
            0: {"pass_rate": 0.5, "mean_score": 0.6, "entropy": 2.0},
            1: {"pass_rate": 0.3, "mean_score": 0.4, "entropy": 3.0},
        },
        "grpo": {
            0: {"pass_rate": 0.25, "mean_score": 0.5, "entropy": math.nan},
            1: {"pass_rate": 0.25, "mean_score": 0.5, "entropy": math.nan},
        },
    }
    lines = c.summary(final, [0, 1]).splitlines()
    assert (
        lines[0] == "| objective | final pass rate | final mean score | final entropy | pass, seed 0 | pass, seed 1 |"
    )
    assert lines[2] == "| sft | 0.400 ± 0.141 | 0.500 ± 0.141 | 2.500 ± 0.707 | 0.500 | 0.300 |"
    assert lines[3] == "| grpo | 0.250 ± 0.000 | 0.500 ± 0.000 | - | 0.250 | 0.250 |", "a metric not logged is '-'"
    assert c.spread([0.7]) == "0.700 ± -"


def test_overrides_name_the_run_directory():
    c = load()
    assert c.slug("learner.epochs=1") == "learner.epochs_1"
    assert c.slug('learner.objective={"type": "sft"}') == "learner.objective_type_sft"
    assert c.slug("learner.precision=bf16") != c.slug("learner.precision=fp32")
