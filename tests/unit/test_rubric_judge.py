"""Rubric judging (judges/rubric.py) over real HTTP against the fake server: weighted criteria
each with its own verdict and critique, the aggregate, a failed criterion's quotes as spans
for CUT, per-criterion metrics, and replies that leave a criterion out."""

from __future__ import annotations

import asyncio
import json

import pytest

from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from alignloop.judges.prompting import Criterion, Parsed, Unparseable, render_messages
from alignloop.judges.rubric import parse_rubric
from alignloop.loop.metrics import judgment_metrics
from alignloop.records import Judgment, Message, Prompt, Sample
from tests.fake_openai_server import FakeOpenAIServer

CRITERIA = [
    {"name": "correctness", "description": "No false statements.", "weight": 3.0},
    {"name": "brevity", "description": "No padding.", "weight": 1.0},
]


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def rubric_judge(server, tmp_path=None) -> OpenAIJudge:
    cache = {"cache": True, "cache_path": str(tmp_path / "c.sqlite")} if tmp_path else {"cache": False}
    return OpenAIJudge(
        OpenAIJudgeConfig(
            model="judge-model", base_url=server.url, api_key_env=None, prompt={"criteria": CRITERIA}, **cache
        )
    )


def judge(j, responses: list[str]) -> list[Judgment]:
    prompt = Prompt(id="p", messages=[Message(role="user", content="Explain tides.")])
    samples = [Sample(id=f"s{n}", prompt_id="p", response=r, policy_version=0) for n, r in enumerate(responses)]
    return asyncio.run(j.judge([prompt] * len(samples), samples))


def test_each_criterion_is_judged_and_the_aggregate_is_weighted(server):
    passing, failing = judge(rubric_judge(server), ["The moon pulls the sea.", "Tides come from wind FAIL=correctness"])
    assert passing.verdict == "positive" and passing.score == pytest.approx(8 / 9) and passing.spans is None
    assert [(c.name, c.verdict, c.weight) for c in passing.criteria] == [
        ("correctness", "positive", 3.0),
        ("brevity", "positive", 1.0),
    ]
    # correctness 3 of 10 -> 2/9 at weight 3, brevity 9 -> 8/9 at weight 1
    assert failing.verdict == "negative" and failing.score == pytest.approx((3 * 2 / 9 + 8 / 9) / 4)
    assert failing.critique.splitlines()[0] == "correctness: Falls short on correctness."
    (span,) = failing.spans  # the failed criterion's quote, located for CUT
    assert "Tides come from wind FAIL=correctness"[span.start : span.end] == "Tides come"
    (body,) = [b for b in server.bodies if "wind" in b["messages"][-1]["content"]]
    assert body["response_format"]["json_schema"]["name"] == "rubric_judgment"
    assert "- correctness [3]: No false statements." in body["messages"][-1]["content"]


def test_per_criterion_scores_are_tracked_in_the_metrics(server):
    out = judge(rubric_judge(server), ["fine", "bad FAIL=brevity", "worse FAIL=brevity,correctness"])
    m = judgment_metrics(out)
    assert m["criterion_correctness_pass_rate"] == pytest.approx(2 / 3)
    assert m["criterion_brevity_pass_rate"] == pytest.approx(1 / 3)
    assert m["criterion_brevity_mean_score"] == pytest.approx((8 / 9 + 2 / 9 + 2 / 9) / 3)
    plain = Judgment(sample_id="x", verdict="positive", judge="j")
    assert not any(k.startswith("criterion_") for k in judgment_metrics([plain]))


def test_a_reply_that_leaves_a_criterion_out_is_unparseable(server):
    (j,) = judge(rubric_judge(server), ["fine RUBRIC=missing"])
    assert j.verdict is None and j.criteria is None
    assert j.error.startswith("unparseable judge reply: the reply left out criteria ['brevity']")


def test_criteria_are_recorded_only_when_set_and_survive_the_cache(server, tmp_path):
    first = judge(rubric_judge(server, tmp_path), ["bad FAIL=brevity"])
    again = judge(rubric_judge(server, tmp_path), ["bad FAIL=brevity"])
    assert server.requests == 1 and again[0].criteria == first[0].criteria and again[0].spans == first[0].spans
    assert "criteria" in json.loads(first[0].model_dump_json())
    assert "criteria" not in json.loads(Judgment(sample_id="x", judge="j").model_dump_json())


@pytest.mark.parametrize(
    "items, why",
    [
        ([{"criterion": "correctness"}], "left out criteria \\['brevity'\\]"),
        ([{"criterion": "style"}], "criteria the rubric does not have: \\['style'\\]"),
        ([{"criterion": "brevity"}] * 2 + [{"criterion": "correctness"}], "\\['brevity'\\] more than once"),
    ],
)
def test_parse_rubric_refuses_a_reply_whose_weights_would_not_add_up(items, why):
    body = {"critique": "Meets it.", "quotes": [], "verdict": "satisfactory", "score": 9}
    reply = json.dumps({"criteria": [{**body, **i} for i in items]})
    with pytest.raises(Unparseable, match=why):
        parse_rubric(reply, [Criterion(**c) for c in CRITERIA])


def test_a_criterion_that_contradicts_itself_is_named():
    wrong = {"criterion": "correctness", "critique": "Wrong.", "quotes": [], "verdict": "unsatisfactory", "score": 10}
    fine = {"criterion": "brevity", "critique": "Short.", "quotes": [], "verdict": "satisfactory", "score": 9}
    criteria = [Criterion(**c) for c in CRITERIA]
    with pytest.raises(Unparseable, match="criterion 'correctness': self-contradicting"):
        parse_rubric(json.dumps({"criteria": [wrong, fine]}), criteria)
    parsed = parse_rubric(json.dumps({"criteria": [{**wrong, "score": 2}, fine]}), criteria)
    assert isinstance(parsed, Parsed) and parsed.verdict == "negative"


def test_the_rubric_prompt_quotes_the_response_and_a_group_mode_is_refused():
    from alignloop.judges.prompting import PromptOptions

    options = PromptOptions(criteria=CRITERIA)
    prompt = Prompt(id="p", messages=[Message(role="user", content="Say {criteria}")])
    user = render_messages(options, prompt, Sample(id="s", prompt_id="p", response="{criteria}", policy_version=0))
    text = user[-1]["content"]
    assert text.count("- correctness [3]") == 1 and "Say {criteria}" in text, "no placeholder inside quotes is filled"
    with pytest.raises(ValueError, match="criteria judge one response at a time"):
        OpenAIJudgeConfig(model="m", api_key_env=None, mode="group", prompt={"criteria": CRITERIA})


def test_the_critique_model_reads_a_rubric_reply_inside_the_rubric_schema(tiny_model, monkeypatch):
    from alignloop.judges import build_judge
    from alignloop.policies.model import Reply
    from tests.helpers import judge_config

    cfg = {"type": "critique_model", "path": str(tiny_model), "device": "cpu", "threads": 1, "constrained": False}
    j = build_judge(judge_config({**cfg, "prompt": {"criteria": CRITERIA}}))
    fail = {"critique": "Wrong.", "quotes": ["the cat"], "verdict": "unsatisfactory", "score": 2}
    ok = {"critique": "Short.", "quotes": [], "verdict": "satisfactory", "score": 9}
    reply = json.dumps({"criteria": [{"criterion": "brevity", **ok}, {"criterion": "correctness", **fail}]})
    monkeypatch.setattr(j, "generate", lambda chats: [Reply(reply, False)] * len(chats))
    (out,) = judge(j, ["the cat sat"])
    assert out.verdict == "negative" and [c.name for c in out.criteria] == ["correctness", "brevity"]
    assert out.spans and (out.spans[0].start, out.spans[0].end) == (0, 7)
    schema = judge_config({**cfg, "constrained": True, "prompt": {"criteria": CRITERIA}}).reply_schema()
    items = schema["properties"]["criteria"]
    assert (items["minItems"], items["items"]["properties"]["criterion"]["enum"]) == (2, ["correctness", "brevity"])
