"""Online CUT vs filtered SFT vs Hindsight on the quickstart task: same prompts, seeds and
sample budget; prints the per-iteration pass rate (the judge's verdict) as a markdown table.

    .venv/bin/python scripts/compare_cut.py                       # the README's table
    .venv/bin/python scripts/compare_cut.py --iterations 3 --objectives cut,sft

Each objective is a full `alignloop run` of configs/quickstart.yaml with only
`learner.objective` changed, in runs/compare-cut/<objective>/ (kept, so `--resume` logic and
`alignloop status` work on them too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from side_by_side import report, run_variants

OBJECTIVES = {
    "cut": "{type: cut}",
    "sft": "{type: sft}",
    "hindsight": "{type: hindsight}",
}
OUT = Path("runs/compare-cut")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--objectives", default="cut,sft,hindsight")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for every run")
    args = parser.parse_args()
    common = [*([f"iterations={args.iterations}"] if args.iterations else []), *args.extra]
    variants = {name: [f"learner.objective={OBJECTIVES[name]}"] for name in args.objectives.split(",")}
    results, wall = run_variants(args.config, variants, OUT, common)
    report(results, wall, {
        "pass_rate": "pass rate (fraction of samples the rule judge accepts; iteration i samples from adapter v{i-1})",
        "mean_score": "mean score (fraction of checks passed)",
    }, OUT)


if __name__ == "__main__":
    main()
