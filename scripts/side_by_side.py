"""Run several variants of one config side by side and print their metrics as a table: the
helper behind scripts/compare_cut.py and scripts/compare_objectives.py.

Each variant is a full `alignloop run` (alignloop.loop.run.run) of the same config with its own
overrides, in `<out>/<variant>/`; the metrics come back from its metrics.jsonl, as any run's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from alignloop.loop.config import load_config


def run_variants(
    config: str | Path, variants: dict[str, list[str]], out: Path, common: list[str] = (), overwrite: bool = False
) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Per variant: its per-iteration metrics and its wall time. `overwrite` starts each run
    over; otherwise a finished run is read back and an unfinished one resumed."""
    from alignloop.loop.run import run

    results, wall = {}, {}
    for name, overrides in variants.items():
        start = time.perf_counter()
        cfg = load_config(config, [f"name=compare-{name}", f"run_dir={out / name}", *common, *overrides])
        run(cfg, resume=not overwrite, overwrite=overwrite)
        lines = (out / name / "metrics.jsonl").read_text().splitlines()
        results[name] = [json.loads(line) for line in lines if line.strip()]
        wall[name] = time.perf_counter() - start
    return results, wall


def table(results: dict[str, list[dict]], key: str) -> str:
    """Markdown: one row per iteration, one column per variant; '-' where a run has no value."""
    n = max(len(r) for r in results.values())
    lines = ["| iteration | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for i in range(n):
        cells = [r[i].get(key) if i < len(r) else None for r in results.values()]
        lines.append(f"| {i + 1} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def report(results: dict[str, list[dict]], wall: dict[str, float], tables: dict[str, str], out: Path, **extra) -> None:
    """Print one table per metric (key -> caption) and the wall times; save all in out/summary.json."""
    for key, caption in tables.items():
        print(f"\n{caption}\n")
        print(table(results, key))
    print("\nwall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in wall.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({**extra, "results": results, "wall_s": wall}, indent=2))
