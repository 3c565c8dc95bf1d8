from __future__ import annotations

import asyncio

import pytest

from alignloop.judges import build_judge
from alignloop.judges.rules import RulesJudgeConfig
from alignloop.records import Message, Prompt, Sample

PROMPT = Prompt(id="p", messages=[Message(role="user", content="Explain tides.")])


def sample(text: str, finish="stop", i=0) -> Sample:
    return Sample(id=f"s{i}", prompt_id="p", response=text, policy_version=0, finish_reason=finish)


def judge(checks, samples):
    j = build_judge(RulesJudgeConfig(checks=checks))
    return asyncio.run(j.judge([PROMPT] * len(samples), samples))


@pytest.mark.parametrize(
    "check, text, finish, expected",
    [
        ({"type": "max_words", "limit": 3}, "one two three four", "stop", "The response has 4 words; the limit is 3."),
        ({"type": "min_words", "limit": 3}, "one two", "stop", "The response has only 2 words; it needs at least 3."),
        (
            {"type": "max_sentences", "limit": 1},
            "One. Two! Three",
            "stop",
            "The response has 3 sentences; the limit is 1.",
        ),
        (
            {"type": "banned_phrases", "phrases": ["As an AI", "sorry"]},
            "as an ai model I'm SORRY",
            "stop",
            'The response uses the banned phrases "As an AI", "sorry".',
        ),
        (
            {"type": "banned_phrases", "phrases": ["it", "that"], "whole_words": True},
            "It is an item that shines",
            "stop",
            'The response uses the banned words "it", "that".',
        ),
        (
            {"type": "required_keywords", "keywords": ["moon", "gravity"]},
            "The moon pulls.",
            "stop",
            'The response must contain every one of the keywords; missing: "gravity".',
        ),
        (
            {"type": "required_keywords", "keywords": ["moon", "sun"], "mode": "any"},
            "Gravity.",
            "stop",
            'The response must contain at least one of the keywords; missing: "moon", "sun".',
        ),
        ({"type": "finished"}, "The moon", "length", "The response is cut off mid-way instead of coming to an end."),
        (
            {"type": "no_lists"},
            "Steps:\n1. Boil\n2. Eat",
            "stop",
            "The response uses a bulleted or numbered list instead of plain prose.",
        ),
        (
            {"type": "regex", "pattern": r"Answer: \d+$"},
            "It is 4.",
            "stop",
            "The response does not contain the required pattern /Answer: \\d+$/.",
        ),
        (
            {"type": "regex", "pattern": "as an ai", "must": "not_match", "ignore_case": True},
            "As an AI, no.",
            "stop",
            "The response contains the forbidden pattern /as an ai/.",
        ),
        (
            {"type": "regex", "pattern": "^#", "message": "The response must be a Markdown heading."},
            "Title",
            "stop",
            "The response must be a Markdown heading.",
        ),
        (
            {"type": "max_chars", "limit": 5},
            "日本語のテキスト",
            "stop",
            "The response has 8 characters; the limit is 5.",
        ),
        (
            {"type": "min_chars", "limit": 4},
            "  ok  ",
            "stop",
            "The response has only 2 characters; it needs at least 4.",
        ),
        ({"type": "starts_with", "prefix": "Yes"}, "No, it is not.", "stop", 'The response must begin with "Yes".'),
        ({"type": "ends_with", "suffix": "。"}, "終わり", "stop", 'The response must end with "。".'),
        (
            {"type": "valid_json"},
            '{"a": 1,}',
            "stop",
            "The response is not valid JSON (Expecting property name enclosed in double quotes at character 8).",
        ),
    ],
)
def test_each_check_says_what_is_wrong(check, text, finish, expected):
    (j,) = judge([check], [sample(text, finish)])
    assert (j.verdict, j.score, j.critique) == ("negative", 0.0, expected)


@pytest.mark.parametrize(
    "check, text",
    [
        ({"type": "max_words", "limit": 4}, "one two three four"),
        ({"type": "max_sentences", "limit": 2}, "One. Two."),
        ({"type": "banned_phrases", "phrases": ["it"], "whole_words": True}, "An item, its size."),
        ({"type": "required_keywords", "keywords": ["Moon"]}, "the moon"),
        ({"type": "no_lists"}, "In 2. grade we learned"),
        ({"type": "regex", "pattern": r"Answer: \d+$"}, "So.\nAnswer: 42"),
        ({"type": "max_chars", "limit": 3}, "日本語"),
        ({"type": "min_chars", "limit": 2}, "ok"),
        ({"type": "starts_with", "prefix": "Yes"}, "\n Yes, indeed."),
        ({"type": "ends_with", "suffix": "。"}, "終わり。\n"),
        ({"type": "valid_json"}, '{"a": [1, 2]}'),
    ],
)
def test_passing_checks(check, text):
    (j,) = judge([check], [sample(text)])
    assert j.verdict == "positive" and j.score == 1.0


def test_verdict_positive_only_when_every_check_passes_and_score_is_fraction():
    checks = [{"type": "max_words", "limit": 3}, {"type": "finished"}, {"type": "banned_phrases", "phrases": ["x"]}]
    a, b = judge(checks, [sample("one two", i=0), sample("one two three four", "length", i=1)])
    assert (a.verdict, a.score, a.critique) == ("positive", 1.0, "The response meets every requirement.")
    assert (b.verdict, round(b.score, 4)) == ("negative", round(1 / 3, 4))
    assert (
        b.critique
        == "The response has 4 words; the limit is 3. The response is cut off mid-way instead of coming to an end."
    )
    assert [a.sample_id, b.sample_id] == ["s0", "s1"] and a.error is None


def test_a_bad_regex_is_a_config_error_naming_the_pattern():
    with pytest.raises(ValueError, match=r"pattern '\(' is not a valid regular expression"):
        RulesJudgeConfig(checks=[{"type": "regex", "pattern": "("}])
