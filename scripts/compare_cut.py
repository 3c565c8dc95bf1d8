"""Online CUT (with judged spans, and with the paper's ratio detection) vs filtered SFT vs
Hindsight: same prompts, seeds and sample budget; prints per-iteration pass rate, mean score,
learn time and rows trained as markdown tables.

    .venv/bin/python scripts/compare_cut.py --task quickstart --iterations 4   # docs/benchmarks.md's tables
    .venv/bin/python scripts/compare_cut.py --task rare                        # good samples are rare
    .venv/bin/python scripts/compare_cut.py --objectives cut-spans,sft --iterations 2

Each objective is a full `alignloop run` of the task's config with only `learner.objective`
changed, in runs/compare-cut/<task>/<objective>/ (kept: a finished run is read back, an
unfinished one resumed, so `alignloop status` works on them too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from side_by_side import report, run_variants

OBJECTIVES = {
    "cut-spans": "{type: cut, detection: spans}",
    "cut-ratio": "{type: cut, detection: ratio}",
    "sft": "{type: sft}",
    "hindsight": "{type: hindsight}",
}
TASKS = {"quickstart": "configs/quickstart.yaml", "rare": "configs/rare-positives.yaml"}
OUT = Path("runs/compare-cut")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="quickstart")
    parser.add_argument("--config", help="another config instead of the task's")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for every run")
    args = parser.parse_args()
    common = [*([f"iterations={args.iterations}"] if args.iterations else []), *args.extra]
    variants = {name: [f"learner.objective={OBJECTIVES[name]}"] for name in args.objectives.split(",")}
    out = OUT / args.task
    results, wall = run_variants(args.config or TASKS[args.task], variants, out, common)
    report(
        results,
        wall,
        {
            "pass_rate": "pass rate (fraction of samples the rule judge accepts; iteration i samples from adapter v{i-1})",
            "mean_score": "mean score (fraction of checks passed)",
            "learn_s": "learn phase, seconds",
            "n_train": "rows trained on",
        },
        out,
    )


if __name__ == "__main__":
    main()
