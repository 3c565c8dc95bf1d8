"""What a run shows while it runs: a progress bar per phase on a terminal, and one summary
line per finished iteration (the record in logs and CI)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm


class Phase:
    """Times one phase and, on an interactive terminal, shows its progress bar (silent in
    logs and CI, where the per-iteration summary line is the record)."""

    def __init__(self, name: str, total: int | None, unit: str):
        self.bar = tqdm(
            total=total, desc=f"  {name}", unit=unit, leave=False, disable=not sys.stderr.isatty(), file=sys.stderr
        )
        self.start, self.elapsed = time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        self.bar.update(n)

    def progress(self, done: int, total: int) -> None:
        """`done` of `total` (a total known only once the phase runs, e.g. optimizer steps)."""
        self.bar.total = total
        self.bar.update(done - self.bar.n)


@contextmanager
def phase(name: str, total: int | None, unit: str):  # total None: not known up front
    p = Phase(name, total, unit)
    try:
        yield p
    finally:
        p.elapsed = time.perf_counter() - p.start
        p.bar.close()


def summary_line(m: dict, total: int, history: list[dict]) -> str:
    first = history[0].get("pass_rate") if history else None

    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    delta = (
        ""
        if first is None or m.get("pass_rate") is None or m["iteration"] == 1
        else f" ({m['pass_rate'] - first:+.2f} vs iter 1)"
    )
    return (
        f"iter {m['iteration']}/{total} | pass {f(m.get('pass_rate'))}{delta} | score {f(m.get('mean_score'))} | "
        f"loss {f(m.get('loss'), '.3f')} | train {m.get('n_train', 0)} | tokens {m.get('tokens_sampled', 0)} | "
        f"errors {m.get('n_judge_errors', 0)} | sample {f(m.get('sample_s'), '.0f')}s judge {f(m.get('judge_s'), '.1f')}s "
        f"learn {f(m.get('learn_s'), '.0f')}s publish {f(m.get('publish_s'), '.1f')}s"
        + (
            " | trained on nothing: the objective found no usable row (check the judgments)"
            if m.get("n_train") == 0
            else ""
        )
    )


def eval_line(name: str, m: dict, source: str) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    return (
        f"{name} | pass {f(m.get('pass_rate'))} | score {f(m.get('mean_score'))} | "
        f"errors {m.get('n_judge_errors', 0)}/{m.get('n_samples', 0)} | {source}"
    )


def placement_line(placement: dict) -> str:
    """ "placed on 2 node(s): samplers on 1a2b3c4d (node_b), ..." """

    def name(nid: str) -> str:
        extra = ", ".join(placement["nodes"].get(nid, []))
        return f"{nid[:8]}" + (f" ({extra})" if extra else "")

    groups = [f"{g} on {', '.join(name(n) for n in placement[g])}" for g in ("samplers", "judges", "learner")]
    return f"placed on {len(placement['nodes'])} node(s): " + "; ".join(groups)
