"""Per-row numbers computed over a whole iteration: rewards, baselines, advantages and
preference pairs. Small pure functions over Examples grouped by prompt id.

Each advantage function sets `Example.advantage` on every row it is given and returns
counts for the metrics. A prompt whose k samples all score the same (or that has a single
sample, k = 1) has no signal relative to itself: its rows get advantage 0 and are counted,
because a run where most prompts are flat learns nothing from RLOO/GRPO however long it runs.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from alignloop.policies.objectives.base import Example


def reward(example: Example) -> float:
    """The judge's score; for a verdict-only judge, 1 for positive and 0 for negative."""
    j = example.judgment
    return j.score if j.score is not None else float(j.verdict == "positive")


def by_prompt(examples: list[Example]) -> list[list[Example]]:
    """Rows grouped by prompt id, groups in order of first appearance."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[e.prompt.id].append(e)
    return list(groups.values())


def no_signal(rewards: np.ndarray) -> bool:
    """One sample, or k equal rewards. Tested on the values themselves: r - mean(r) of equal
    rewards can be 1e-10 instead of 0 in floating point, which std-scaling blows up to O(1)."""
    return len(set(rewards.tolist())) == 1


def group_counts(groups: list[list[Example]]) -> dict[str, int]:
    """How many prompts there are, and how many carry no within-prompt signal."""
    flat = sum(len(g) > 1 and len({reward(e) for e in g}) == 1 for g in groups)
    single = sum(len(g) == 1 for g in groups)
    return {"n_train_prompts": len(groups), "n_flat_prompts": flat, "n_single_prompts": single}


def rloo_advantages(examples: list[Example]) -> dict[str, int]:
    """RLOO: r_i minus the mean reward of the prompt's other k-1 samples.

    Equal to k/(k-1) * (r_i - mean of all k). With k = 1 there is no other sample to form a
    baseline, so the advantage is 0 (counted in n_single_prompts) rather than the raw reward,
    which would turn RLOO into baseline-free REINFORCE for those prompts only."""
    groups = by_prompt(examples)
    for g in groups:
        r = np.array([reward(e) for e in g], dtype=np.float64)  # (k,)
        adv = np.zeros_like(r) if no_signal(r) else r - (r.sum() - r) / (len(r) - 1)
        for e, a in zip(g, adv):
            e.advantage = float(a)
    return group_counts(groups)


def group_normalized_advantages(
    examples: list[Example], scale_by_std: bool = True, eps: float = 1e-6
) -> dict[str, int]:
    """GRPO: (r_i - mean) / (std + eps) within the prompt's group; std is the sample std
    (n-1), as the GRPO reference implementations use. scale_by_std=False keeps r_i - mean
    (Dr. GRPO), which does not up-weight prompts that are nearly solved or nearly hopeless.
    A flat group or k = 1 gives 0 (not 0/eps noise)."""
    groups = by_prompt(examples)
    for g in groups:
        r = np.array([reward(e) for e in g], dtype=np.float64)  # (k,)
        if no_signal(r):
            adv = np.zeros_like(r)
        else:
            adv = (r - r.mean()) / ((r.std(ddof=1) + eps) if scale_by_std else 1.0)
        for e, a in zip(g, adv):
            e.advantage = float(a)
    return group_counts(groups)


def mean_baseline_advantages(examples: list[Example]) -> dict[str, int]:
    """REINFORCE with a baseline: r_i minus the mean reward of the whole iteration's batch.
    Unlike RLOO the baseline ignores which prompt a sample answers, so an easy prompt's
    samples all get positive advantages."""
    if not examples:
        return group_counts([])
    r = np.array([reward(e) for e in examples], dtype=np.float64)  # (N,)
    for e, a in zip(examples, r - r.mean()):
        e.advantage = float(a)
    return group_counts(by_prompt(examples))


# preference pairs -------------------------------------------------------------------------


def _comparable(g: list[Example]) -> tuple[list[Example], list[float], bool]:
    """The rows of one prompt that can be ranked, their keys, and whether the keys are scores.
    The judge's ranks when every row has one (a judge that compared the responses said which
    is better: that order, not scores judged apart); else scores when every row has one; else
    verdicts (positive 1 > negative 0) of the rows that have one. The minimum gap applies to
    scores only (a rank or a verdict has no scale)."""
    ranks = [e.judgment.rank for e in g if e.judgment.rank is not None]
    if g and len(ranks) == len(g):
        return g, [-float(r) for r in ranks], False
    scores = [e.judgment.score for e in g if e.judgment.score is not None]
    if len(scores) == len(g):
        return g, scores, True
    ranked = [e for e in g if e.judgment.verdict is not None]
    return ranked, [float(e.judgment.verdict == "positive") for e in ranked], False


def prompt_pairs(g: list[Example], mode: str, min_gap: float) -> list[tuple[Example, Example, float]]:
    """(chosen, rejected, gap) for one prompt. best_vs_worst: the top row against the bottom
    one (first on ties); all: every pair with a strictly better chosen. Pairs whose score gap
    is below min_gap are dropped; equal keys never make a pair."""
    rows, keys, scored = _comparable(g)
    if mode == "best_vs_worst":
        order = sorted(range(len(rows)), key=lambda i: -keys[i])  # stable: first on ties
        candidates = [(order[0], order[-1])] if rows else []
    else:
        candidates = [(i, j) for i in range(len(rows)) for j in range(len(rows)) if keys[i] > keys[j]]
    need = min_gap if scored else 0.0
    return [
        (rows[i], rows[j], keys[i] - keys[j]) for i, j in candidates if keys[i] > keys[j] and keys[i] - keys[j] >= need
    ]


def build_pairs(
    examples: list[Example], mode: str = "best_vs_worst", min_gap: float = 0.0
) -> tuple[list[Example], dict]:
    """Rows ordered chosen, rejected, chosen, rejected, ... Each row is a copy carrying
    `chosen` (True or False) and `gap`, because in mode `all` one sample can be the
    chosen side of one pair and the rejected side of another."""
    rows: list[Example] = []
    groups = by_prompt(examples)
    without = 0
    for g in groups:
        pairs = prompt_pairs(g, mode, min_gap)
        without += not pairs
        for chosen, rejected, gap in pairs:
            rows.append(Example(chosen.prompt, chosen.sample, chosen.judgment, chosen=True, gap=gap))
            rows.append(Example(rejected.prompt, rejected.sample, rejected.judgment, chosen=False, gap=gap))
    return rows, {"n_train_prompts": len(groups), "n_pairs": len(rows) // 2, "n_prompts_without_pair": without}
