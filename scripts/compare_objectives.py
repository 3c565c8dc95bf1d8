"""The objectives side by side over several seeds: filtered SFT, CUT (the paper's ratio and the
judge's spans), Hindsight, self-distillation, GRPO and a routed mixture (and, on request,
best-of-N, RLOO, PPO, online DPO), on the quickstart task and on the rare-positives task; the
same prompts, seeds and sample budget for each. Prints, per task, each objective's final pass
rate, mean score and entropy as mean ± standard deviation over the seeds, then the per-seed values.

    .venv/bin/python scripts/compare_objectives.py                                   # both tasks, seeds 0,1,2
    .venv/bin/python scripts/compare_objectives.py --task rare --iterations 3 --prompts 8
    .venv/bin/python scripts/compare_objectives.py --objectives best-of-n,rloo,grpo,ppo,online-dpo --seeds 0

Each run is a real run of the loop (alignloop.loop.run.run) on the task's config with only
`learner.objective` and the seed changed (GRPO, RLOO, PPO and online DPO from their shipped
configs, so the table measures what those run). Run directories:
runs/compare-objectives/<task>-i<iterations>-p<prompts>[-<each --set>]/seed<seed>/<objective>/, kept: a
finished run is read back and an unfinished one resumed, so an interrupted comparison goes on
where it stopped. The pass rate of iteration i is that of samples drawn from adapter v{i-1}:
the final iteration's measures the adapter after iterations - 1 updates.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

import yaml
from side_by_side import run_variants

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("runs/compare-objectives")
TASKS = {"quickstart": "configs/quickstart.yaml", "rare": "configs/rare-positives.yaml"}


def objective_of(config: str) -> dict:
    """A shipped config's objective block."""
    return yaml.safe_load((ROOT / config).read_text())["learner"]["objective"]


def routed() -> dict:
    """The mixture: self-distillation on the negatives a critique explains, GRPO on every
    scored group (the two signals a rule judge gives: a critique with spans, and a score)."""
    return {
        "type": "routed",
        "routes": [
            {"objective": {"type": "self_distill", "positives": "none"}, "rows": "negatives_with_critique"},
            {"objective": objective_of("configs/grpo.yaml"), "rows": "scored"},
        ],
    }


OBJECTIVES = {
    "sft": lambda: {"type": "sft"},
    "cut-ratio": lambda: {"type": "cut", "detection": "ratio"},
    "cut-spans": lambda: {"type": "cut", "detection": "spans"},
    "hindsight": lambda: {"type": "hindsight"},
    "self-distill": lambda: {"type": "self_distill"},
    "grpo": lambda: objective_of("configs/grpo.yaml"),
    "routed": routed,
    # Best-of-N is filtered SFT on each prompt's best sample; it has no config of its own.
    "best-of-n": lambda: {"type": "sft", "best_of_n": True},
    "rloo": lambda: objective_of("configs/rloo.yaml"),
    "ppo": lambda: objective_of("configs/ppo.yaml"),
    "online-dpo": lambda: objective_of("configs/online-dpo.yaml"),
}
DEFAULT = "sft,cut-ratio,cut-spans,hindsight,self-distill,grpo,routed"
# The entropy of the final samples under the policy that drew them: a pass rate bought by
# degenerate text (short strings of random words pass a length check) shows as entropy rising.
METRICS = {"pass_rate": "final pass rate", "mean_score": "final mean score", "entropy": "final entropy"}


def slug(override: str) -> str:
    """`learner.epochs=1` -> `learner.epochs_1`: an override as a directory name's part."""
    return re.sub(r"[^A-Za-z0-9._]+", "_", override).strip("_")


def spread(values: list[float]) -> str:
    """mean ± sample standard deviation (± - for one seed), over the values an objective logs."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    sd = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
    return f"{statistics.mean(values):.3f} ± {sd}"


def summary(final: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Markdown: one row per objective, mean ± std over seeds of each final metric, then the
    per-seed pass rates."""
    head = ["objective", *METRICS.values(), *(f"pass, seed {s}" for s in seeds)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, by_seed in final.items():
        cells = [spread([by_seed[s][k] for s in seeds]) for k in METRICS]
        cells += [f"{by_seed[s]['pass_rate']:.3f}" for s in seeds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*TASKS, "both"], default="both")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--iterations", type=int, help="iterations per run (default: the task config's)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration (each sampled k = 4 times)")
    parser.add_argument("--objectives", default=DEFAULT, help=f"comma-separated, from {', '.join(OBJECTIVES)}")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="an override for every run")
    args = parser.parse_args()
    names, seeds = args.objectives.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(names) - set(OBJECTIVES))
    if unknown:
        parser.error(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    variants = {name: [f"learner.objective={json.dumps(OBJECTIVES[name]())}"] for name in names}
    tasks = list(TASKS) if args.task == "both" else [args.task]
    everything = {}
    for task in tasks:
        config = yaml.safe_load((ROOT / TASKS[task]).read_text())
        iterations = args.iterations or config["iterations"]
        # the overrides name the directory too, so runs under other settings are never read back
        out = OUT / "-".join([f"{task}-i{iterations}-p{args.prompts}", *map(slug, args.extra)])
        final: dict[str, dict[int, dict]] = {name: {} for name in names}
        for seed in seeds:
            common = [f"seed={seed}", f"iterations={iterations}", f"data.prompts_per_iteration={args.prompts}"]
            results, wall = run_variants(ROOT / TASKS[task], variants, out / f"seed{seed}", [*common, *args.extra])
            for name, rows in results.items():
                final[name][seed] = {**{k: rows[-1].get(k, math.nan) for k in METRICS}, "wall_s": wall[name]}
            everything[f"{task}/seed{seed}"] = results
        print(f"\n{task}: {iterations} iterations x {args.prompts} prompts x 4 samples, seeds {args.seeds}\n")
        print(summary(final, seeds))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps({"args": vars(args), "results": everything}, indent=2))


if __name__ == "__main__":
    main()
