"""Best-of-N vs RLOO vs GRPO vs PPO vs online DPO on the quickstart task: the same iterations,
prompts, seeds and sample budget for each; prints the per-iteration mean score (the fraction
of the rule judge's checks passed) as a markdown table.

    .venv/bin/python scripts/compare_objectives.py                                # 6 iterations x 16 prompts
    .venv/bin/python scripts/compare_objectives.py --iterations 1 --prompts 4     # a smoke run

Each objective is a real run of the loop (alignloop.loop.run.run) on configs/quickstart.yaml with only
`learner.objective` changed, taken from configs/<objective>.yaml so the table measures what
those configs run. Run directories: runs/compare-objectives/<objective>/, overwritten.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from side_by_side import report, run_variants

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("runs/compare-objectives")


def objective_of(config: str) -> str:
    """A shipped config's objective block, as a one-line override value (JSON is YAML)."""
    return json.dumps(yaml.safe_load((ROOT / config).read_text())["learner"]["objective"])


# Best-of-N is filtered SFT on each prompt's best sample; it has no config of its own.
OBJECTIVES = {
    "best-of-n": lambda: json.dumps({"type": "sft", "best_of_n": True}),
    "rloo": lambda: objective_of("configs/rloo.yaml"),
    "grpo": lambda: objective_of("configs/grpo.yaml"),
    "ppo": lambda: objective_of("configs/ppo.yaml"),
    "online-dpo": lambda: objective_of("configs/online-dpo.yaml"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6, help="iterations per objective")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration (each sampled k = 4 times)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated subset")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="an override for every run")
    args = parser.parse_args()
    names = args.objectives.split(",")
    unknown = sorted(set(names) - set(OBJECTIVES))
    if unknown:
        parser.error(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    common = [
        f"seed={args.seed}",
        f"iterations={args.iterations}",
        f"data.prompts_per_iteration={args.prompts}",
        *args.extra,
    ]
    variants = {name: [f"learner.objective={OBJECTIVES[name]()}"] for name in names}
    results, wall = run_variants(ROOT / "configs/quickstart.yaml", variants, OUT, common, overwrite=True)
    report(
        results,
        wall,
        {
            "mean_score": "mean score (fraction of the rule judge's checks passed; iteration i samples from adapter v{i-1})",
        },
        OUT,
        args=vars(args),
    )


if __name__ == "__main__":
    main()
