"""Reproduce both papers' qualitative findings with alignloop's own objectives, on CPU in
minutes: prints markdown tables and one PASS/FAIL line per check (measured value and
threshold, measured on every run), and exits 1 if any check fails.

    .venv/bin/python scripts/reproduce.py                    # both suites, seeds 0,1,2
    .venv/bin/python scripts/reproduce.py --only bandit      # the categorical bandit only
    .venv/bin/python scripts/reproduce.py --only cut --seeds 0,1

bandit  Tajwar et al. 2024 (docs/methods.md §2), scripts/repro_bandit.py: on-policy sampling and
        negative gradients vs offline maximum likelihood on a 100-action categorical bandit.
cut     Xu et al. 2023 (docs/methods.md §1), scripts/repro_cut.py + repro_cut_task.py: online CUT
        vs filtered SFT vs Hindsight vs unlikelihood on every token, on a tiny pretrained
        chat model through alignloop's Learner and HFSampler.

--smoke shrinks every size (a few steps, one round) to test the plumbing in seconds; its
numbers mean nothing and its checks may fail.

--readme docs/reproduction.md writes what it printed (tables and checks) into that page between the
`<!-- reproduce:begin -->` and `<!-- reproduce:end -->` lines, so its tables are
always the script's own output and cannot drift from the code (full runs of both suites only).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, ">": lambda v, t: v > t}
MARKERS = re.compile(r"(<!-- reproduce:begin -->\n).*?(<!-- reproduce:end -->)", re.DOTALL)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["bandit", "cut"], help="run one suite (default: both)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; every check must hold for each")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the fastest on a shared 2-core machine)"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="the CUT suite's learner and sampler (bf16: autocast learner, bfloat16 sampler); the bandit has no model and ignores it",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: tests the plumbing, not the findings")
    parser.add_argument(
        "--readme",
        type=Path,
        help="write the report into this Markdown page (docs/reproduction.md) between the reproduce markers",
    )
    args = parser.parse_args(argv)
    if args.readme and (args.smoke or args.only or args.precision != "fp32"):
        parser.error("--readme takes the full float32 report: drop --smoke, --only and --precision")
    if args.readme and not MARKERS.search(args.readme.read_text(encoding="utf-8")):
        parser.error(f"{args.readme} has no '<!-- reproduce:begin -->' ... '<!-- reproduce:end -->' block to fill")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    return args


def check_lines(checks: list[tuple]) -> tuple[list[str], int]:
    """A markdown table, one row per check: PASS/FAIL, what, measured, threshold."""
    lines = ["| result | check | measured | threshold |", "|---|---|---|---|"]
    failed = 0
    for name, value, op, threshold in checks:
        ok = OPS[op](value, threshold)
        failed += not ok
        lines.append(f"| {'PASS' if ok else 'FAIL'} | {name} | {value:.3f} | {op} {threshold:g} |")
    return lines, failed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)  # before importing torch: --help and bad flags answer at once
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load buries the tables
    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    start, failed, printed = time.perf_counter(), 0, []
    if args.only in (None, "bandit"):
        import repro_bandit

        sizes = dict(steps=5, groups=2) if args.smoke else {}
        failed += report("bandit", *repro_bandit.run(args.seeds, **sizes), printed)
    if args.only in (None, "cut"):
        import repro_cut

        s = repro_cut.Settings(precision=args.precision)
        if args.smoke:
            s = repro_cut.Settings(
                rounds=1, prompts=4, k=2, eval_prompts=4, pretrain_steps=4, easy_steps=2, precision=args.precision
            )
        with tempfile.TemporaryDirectory(prefix="alignloop-repro-") as tmp:
            failed += report(
                "cut", *repro_cut.run(args.seeds, s, Path(tmp), log=lambda m: print(m, flush=True)), printed
            )
    wall = f"wall time: {time.perf_counter() - start:.0f} s ({args.threads} torch thread(s))"
    print(f"\n{wall}")
    print("ALL CHECKS PASS" if not failed else f"{failed} CHECK(S) FAILED")
    if args.readme:
        block = (
            "\n\n".join(printed)
            + f"\n\nSeeds {args.seeds}; {wall}, {'all checks pass' if not failed else f'{failed} check(s) FAILED'}.\n"
        )
        write_readme(args.readme, block)
        print(f"wrote the report into {args.readme}")
    return 1 if failed else 0


def write_readme(path: Path, block: str) -> None:
    """Replace what stands between the reproduce markers of `path` with `block`."""
    text = path.read_text(encoding="utf-8")
    path.write_text(MARKERS.sub(lambda m: m.group(1) + block + m.group(2), text), encoding="utf-8")


def report(suite: str, text: str, checks: list[tuple], printed: list[str]) -> int:
    lines, failed = check_lines(checks)
    section = f"{text}\n\n#### Checks: {suite}\n\n" + "\n".join(lines)
    print(f"\n{section}", flush=True)
    printed.append(section)
    return failed


if __name__ == "__main__":
    sys.exit(main())
