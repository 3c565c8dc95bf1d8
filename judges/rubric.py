"""Rubric judging: weighted criteria, each judged on its own (verdict, score, critique, quotes),
in one reply per response.

With `prompt.criteria` set, the text judges (the API judge, the local critique model) ask for
{"criteria": [{"criterion": name, "critique", "quotes", "verdict", "score"}, ...]}, one item
per criterion. Each item is read as a judgment of its own (judges/prompting.py's checks: a
placeholder echoed back or a verdict its score contradicts is unreadable). The aggregate:
the score is the weighted mean of the criteria's scores; the verdict is negative when any
criterion failed; the critique names each criterion with its critique, failed ones first; the
quotes of the failed criteria become the judgment's spans (what CUT's `detection: spans`
trains on). A reply that leaves a criterion out, names one twice or names one the rubric does
not have is unparseable: the weights would not add up.
"""

from __future__ import annotations

import json
import math
from typing import Any

from alignloop.judges.prompting import Criterion, Parsed, Unparseable, _snippet, find_json_list, parse_judgment
from alignloop.records import CriterionJudgment


def rubric_schema(criteria: list[Criterion], max_chars: int | None = None, score_range=None) -> dict:
    """The JSON schema of a rubric reply; bounded for decoding on a local model."""
    bounded = max_chars is not None
    text: dict[str, Any] = {"type": "string", **({"maxLength": max_chars} if bounded else {})}
    score: dict[str, Any] = {"type": "integer"}
    if bounded and score_range is not None:
        score.update(minimum=math.ceil(score_range[0]), maximum=math.floor(score_range[1]))
    item = {
        "type": "object",
        "properties": {
            "criterion": {"type": "string", "enum": [c.name for c in criteria]},
            "critique": text,
            "quotes": {"type": "array", "items": text, **({"maxItems": 4} if bounded else {})},
            "verdict": {"type": "string", "enum": ["satisfactory", "unsatisfactory"]},
            "score": score,
        },
        "required": ["criterion", "critique", "quotes", "verdict", "score"],
        "additionalProperties": False,
    }
    n = len(criteria)
    return {
        "type": "object",
        "properties": {
            "criteria": {"type": "array", "items": item, **({"minItems": n, "maxItems": n} if bounded else {})}
        },
        "required": ["criteria"],
        "additionalProperties": False,
    }


def parse_rubric(text: str, criteria: list[Criterion], score_range: tuple[float, float] = (1, 10)) -> Parsed:
    """The aggregate judgment of a rubric reply, with each criterion's judgment."""
    items = find_json_list(text, "criteria")
    if items is None:
        raise Unparseable(f"no JSON object with a list of criteria in the reply: {_snippet(text)}")
    by_name: dict[str, list[dict]] = {}
    for item in items:
        name = item.get("criterion") if isinstance(item, dict) else None
        by_name.setdefault(str(name), []).append(item)
    names = [c.name for c in criteria]
    if unknown := sorted(set(by_name) - set(names)):
        raise Unparseable(f"the reply judged criteria the rubric does not have: {unknown}")
    if missing := [n for n in names if n not in by_name]:
        raise Unparseable(f"the reply left out criteria {missing}")
    if twice := [n for n in names if len(by_name[n]) > 1]:
        raise Unparseable(f"the reply judged criteria {twice} more than once")
    judged = []
    for c in criteria:
        try:
            p = parse_judgment(json.dumps(by_name[c.name][0]), score_range)
        except Unparseable as e:
            raise Unparseable(f"criterion {c.name!r}: {e}") from None
        judged.append((c, p))
    return aggregate(judged)


def aggregate(judged: list[tuple[Criterion, Parsed]]) -> Parsed:
    failed = [(c, p) for c, p in judged if p.verdict == "negative"]
    scored = [(c.weight, p.score) for c, p in judged if p.score is not None]
    score = sum(w * s for w, s in scored) / sum(w for w, _ in scored) if len(scored) == len(judged) else None
    passed = [(c, p) for c, p in judged if p.verdict == "positive"]
    critique = "\n".join(f"{c.name}: {p.critique}" for c, p in failed + passed if p.critique) or None
    return Parsed(
        verdict="negative" if failed else "positive",
        score=score,
        critique=critique,
        quotes=tuple(q for _, p in failed for q in p.quotes),
        criteria=tuple(
            CriterionJudgment(name=c.name, weight=c.weight, verdict=p.verdict, score=p.score, critique=p.critique)
            for c, p in judged
        ),
    )
