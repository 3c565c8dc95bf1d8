"""Preferences and ranks: a group judge that ranks its responses (two: a preference), the rank
in the Judgment record (written only when set, older records unchanged), and DPO/IPO pairing
by the ranks instead of the scores."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from alignloop.policies.objectives.advantages import build_pairs
from alignloop.policies.objectives.base import Example
from alignloop.policies.objectives.options import DPOOptions
from alignloop.policies.objectives.registry import build_objective
from alignloop.records import Judgment, Message, Prompt, Sample
from tests.fake_openai_server import FakeOpenAIServer


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def ranking_judge(server, **over) -> OpenAIJudge:
    return OpenAIJudge(
        OpenAIJudgeConfig(
            model="judge-model",
            base_url=server.url,
            api_key_env=None,
            cache=False,
            max_retries=1,
            backoff_base_s=0.01,
            mode="group",
            group={"rank": True},
            **over,
        )
    )


def judge_group(judge, instruction: str, responses: list[str]):
    prompt = Prompt(id="p", messages=[Message(role="user", content=instruction)])
    samples = [Sample(id=f"s{n}", prompt_id="p", response=r, policy_version=0) for n, r in enumerate(responses, 1)]
    return asyncio.run(judge.judge([prompt] * len(samples), samples))


def test_a_ranked_group_records_each_samples_rank(server):
    out = judge_group(ranking_judge(server), "Explain tides.", ["weak one", "good one", "weak two", "good two"])
    assert [j.rank for j in out] == [3, 1, 4, 2] and all(j.error is None for j in out)
    (body,) = server.bodies
    item = body["response_format"]["json_schema"]["schema"]["properties"]["judgments"]["items"]
    assert "rank" in item["required"] and 'give each item a "rank"' in body["messages"][-1]["content"]


def test_two_responses_compared_are_a_preference(server):
    rejected, chosen = judge_group(ranking_judge(server), "Say hi.", ["weak hello", "good hello"])
    assert (chosen.rank, rejected.rank) == (1, 2)


def test_ranks_that_are_not_one_to_k_each_once_are_an_error_for_the_group(server):
    out = judge_group(ranking_judge(server), "Explain tides. GROUP=tie", ["good a", "good b", "weak c"])
    assert all(j.rank is None and j.verdict is None for j in out)
    assert all("unparseable judge reply: the reply's ranks [1, 1, 3] are not 1..3, each once" in j.error for j in out)


def test_the_rank_is_written_only_when_set_and_old_records_still_load():
    plain = Judgment(sample_id="s", verdict="positive", score=0.5, judge="j")
    assert "rank" not in json.loads(plain.model_dump_json()), "records without a rank are written as before"
    ranked = plain.model_copy(update={"rank": 2})
    assert Judgment.model_validate_json(ranked.model_dump_json()).rank == 2
    old = '{"sample_id":"s","verdict":"positive","score":0.5,"critique":null,"judge":"j","latency_s":0.0,"error":null}'
    assert Judgment.model_validate_json(old).rank is None
    with pytest.raises(ValueError):
        Judgment(sample_id="s", judge="j", rank=0)


def example(i: int, score: float, rank: int | None) -> Example:
    p = Prompt(id="a", messages=[Message(role="user", content="the cat")])
    s = Sample(id=f"a#{i}", prompt_id="a", response="yes the sun", policy_version=0)
    return Example(p, s, Judgment(sample_id=s.id, score=score, judge="t", rank=rank))


def test_dpo_pairs_by_the_ranks_when_every_judgment_has_one():
    """Scores 0.9, 0.1, 0.5 would pair a#0 over a#1; the judge that compared them ranked a#1
    first and a#0 last, and that decides. min_gap is for scores: ranks have no scale."""
    rows = [example(0, 0.9, 3), example(1, 0.1, 1), example(2, 0.5, 2)]
    pairs, m = build_pairs(rows, "best_vs_worst", min_gap=5.0)
    assert [e.sample.id for e in pairs] == ["a#1", "a#0"] and m["n_pairs"] == 1
    pairs, _ = build_pairs(rows, "all")
    assert [e.sample.id for e in pairs] == ["a#1", "a#0", "a#1", "a#2", "a#2", "a#0"]
    kept, _ = build_objective(DPOOptions()).select(rows, np.random.default_rng(0))
    assert [(e.sample.id, e.chosen) for e in kept] == [("a#1", True), ("a#0", False)]


def test_without_a_rank_on_every_judgment_the_scores_decide():
    rows = [example(0, 0.9, 3), example(1, 0.1, None), example(2, 0.5, 2)]
    pairs, _ = build_pairs(rows, "best_vs_worst")
    assert [e.sample.id for e in pairs] == ["a#0", "a#1"]
